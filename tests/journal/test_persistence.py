"""eventsourcing's own reusable recorder test cases, run against journal.persistence on real NATS."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment

from journal import persistence


@pytest.fixture(autouse=True, scope="class")
def _nats(request: pytest.FixtureRequest, nats_url: str) -> None:
    request.cls.nats_url = nats_url


class JetStreamCase:
    nats_url: str

    def setUp(self) -> None:
        self.env = Environment(
            name="t" + uuid.uuid4().hex[:12],  # a fresh name is a fresh, empty journal
            env={"PERSISTENCE_MODULE": "journal.persistence", "SOUL_NATS_URL": self.nats_url},
        )
        super().setUp()  # InfrastructureFactoryTestCase constructs self.factory from self.env
        if not hasattr(self, "factory"):
            self.factory: Any = InfrastructureFactory.construct(self.env)

    def tearDown(self) -> None:
        self.factory.close()
        super().tearDown()


class TestAggregateRecorder(JetStreamCase, AggregateRecorderTestCase):
    def create_recorder(self) -> persistence.JetStreamAggregateRecorder:
        return self.factory.aggregate_recorder()


class TestSnapshotRecorder(JetStreamCase, AggregateRecorderTestCase):
    def create_recorder(self) -> persistence.JetStreamAggregateRecorder:
        return self.factory.aggregate_recorder("snapshots")


class TestApplicationRecorder(JetStreamCase, ApplicationRecorderTestCase):
    def create_recorder(self) -> persistence.JetStreamApplicationRecorder:
        return self.factory.application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderWithStrIds(TestApplicationRecorder):
    def new_originator_id(self) -> str:
        return "aggregate/" + uuid.uuid4().hex + " with spaces.and.dots"


class TestNonInterleavingNotificationIDs(JetStreamCase, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> persistence.JetStreamApplicationRecorder:
        return self.factory.application_recorder()


class TestTrackingRecorder(JetStreamCase, TrackingRecorderTestCase):
    def create_recorder(self) -> persistence.JetStreamTrackingRecorder:
        return self.factory.tracking_recorder()


class TestProcessRecorder(JetStreamCase, ProcessRecorderTestCase):
    def create_recorder(self) -> persistence.JetStreamProcessRecorder:
        return self.factory.process_recorder()


class TrackingRecorderSubclass(persistence.JetStreamTrackingRecorder):
    pass


class TestFactory(JetStreamCase, InfrastructureFactoryTestCase[persistence.Factory]):
    def expected_factory_class(self) -> type[persistence.Factory]:
        return persistence.Factory

    def expected_aggregate_recorder_class(self) -> type:
        return persistence.JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type:
        return persistence.JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type:
        return persistence.JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type:
        return persistence.JetStreamProcessRecorder


del InfrastructureFactoryTestCase, AggregateRecorderTestCase, ApplicationRecorderTestCase
del NonInterleavingNotificationIDsBaseCase, TrackingRecorderTestCase, ProcessRecorderTestCase
