"""`python -m patrol.sms` runs the stub SMS gateway, same as `patrol sms-gateway`."""

from patrol.sms.gateway import sms_gateway_command

if __name__ == "__main__":
    sms_gateway_command(prog_name="patrol sms-gateway")
