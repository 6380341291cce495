"""The local cluster's layout: the nodes' configuration, ports and status, with no Java started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patrol.devtools.broker import (
    CLUSTER_FILE,
    BrokerError,
    LocalBroker,
    LocalCluster,
    Quorum,
    local_kafka,
)


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key: value for key, value in pairs}


def test_a_single_broker_is_its_own_quorum_with_one_replica_of_kafkas_topics(
    tmp_path: Path,
) -> None:
    props = properties(LocalBroker(tmp_path, port=19999).server_properties(20001))
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:20001"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"


def test_a_node_of_three_names_every_voter_and_replicates_kafkas_topics_three_times(
    tmp_path: Path,
) -> None:
    voters = "1@127.0.0.1:30001,2@127.0.0.1:30002,3@127.0.0.1:30003"
    node = LocalBroker(tmp_path, port=19501, quorum=Quorum(2, voters, "abc", 3))
    props = properties(node.server_properties(30002))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == voters
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19501,CONTROLLER://127.0.0.1:30002"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"


def test_cluster_nodes_listen_on_consecutive_ports_and_share_the_recorded_layout(
    tmp_path: Path,
) -> None:
    layout = {"cluster_id": "xyz", "port": 19500, "controller_ports": [31001, 31002, 31003]}
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / CLUSTER_FILE).write_text(json.dumps(layout))
    cluster = LocalCluster(tmp_path, nodes=5, port=1234)  # the recorded layout wins
    assert cluster.bootstrap == "127.0.0.1:19500,127.0.0.1:19501,127.0.0.1:19502"
    nodes = cluster.nodes
    assert [n.state_dir.name for n in nodes] == ["node-1", "node-2", "node-3"]
    assert {n.quorum.cluster_id for n in nodes if n.quorum} == {"xyz"}
    assert cluster.node(3).quorum == Quorum(
        3, "1@127.0.0.1:31001,2@127.0.0.1:31002,3@127.0.0.1:31003", "xyz", 3
    )


def test_status_of_a_never_started_cluster_lists_each_node(tmp_path: Path) -> None:
    status = LocalCluster(tmp_path, nodes=3, port=19600).status()
    assert not status.running
    text = status.describe()
    assert "0 of 3 nodes running" in text
    assert "bootstrap: 127.0.0.1:19600,127.0.0.1:19601,127.0.0.1:19602" in text
    assert LocalCluster(tmp_path, nodes=3).stop() is False


def test_a_cluster_of_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="two nodes or more"):
        LocalCluster(tmp_path, nodes=1)


def test_stop_and_status_find_the_cluster_started_in_a_state_dir(tmp_path: Path) -> None:
    assert isinstance(local_kafka(tmp_path, port=19700), LocalBroker)
    assert isinstance(local_kafka(tmp_path, port=19700, nodes=3), LocalCluster)
    (tmp_path / CLUSTER_FILE).write_text(
        json.dumps({"cluster_id": "c", "port": 19700, "controller_ports": [1, 2, 3]})
    )
    found = local_kafka(tmp_path, port=19700)
    assert isinstance(found, LocalCluster)
    assert found.size == 3
