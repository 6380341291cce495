"""SMS warnings (CONTRACT §7): the worker's notifier and the stub gateway `patrol sms-gateway`."""

from patrol.sms.gateway import Faults, create_gateway_app, sms_gateway_command
from patrol.sms.notifier import SmsNotifier, SmsRequestLike, request_body

__all__ = [
    "Faults",
    "SmsNotifier",
    "SmsRequestLike",
    "create_gateway_app",
    "request_body",
    "sms_gateway_command",
]
