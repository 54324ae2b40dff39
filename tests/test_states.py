"""Tests for the ME-to-Docker state mapping, Status text and time formatting."""

from twisted.trial.unittest import SynchronousTestCase

from emiso.engine import states, timeutil
from emiso.errors import InvalidParameter

MINUTE = 60
HOUR = 3600
DAY = 24 * HOUR

NOW = 1_796_399_091.0  # 2026-12-04T15:44:51Z


class DockerStateTests(SynchronousTestCase):
    """The ME state table."""

    def test_every_me_state_mapped(self):
        expected = {
            "booting": "created",
            "preparing": "created",
            "living": "running",
            "suspended": "paused",
            "migrating": "error",
            "dormant": "paused",
            "killed": "dead",
            "terminated": "exited",
            "dead": "dead",
        }

        actual = {me: states.docker_state(me) for me in states.ME_STATES}

        self.assertEqual(actual, expected)

    def test_unknown_me_state_rejected(self):
        self.assertRaises(ValueError, states.docker_state, "sleeping")

    def test_mapped_states_are_filterable(self):
        mapped = {states.docker_state(me) for me in states.ME_STATES}

        unknown = mapped - set(states.STATE_FILTER_VALUES)

        self.assertEqual(unknown, set())


class StatusTextTests(SynchronousTestCase):
    """Docker's human-readable Status, in moby's order of checks."""

    def status(self, state, me_state=None, started=None, finished=None, **kw):
        exit_code = kw.pop("exit_code", 0)
        return states.status_text(
            state, me_state, started, finished, exit_code, NOW, **kw
        )

    def test_running_shows_uptime(self):
        text = self.status("running", "living", started=NOW - 5 * MINUTE)

        self.assertEqual(text, "Up 5 minutes")

    def test_running_just_started(self):
        text = self.status("running", "living", started=NOW - 0.2)

        self.assertEqual(text, "Up Less than a second")

    def test_paused_shows_uptime(self):
        text = self.status("paused", "suspended", started=NOW - 3 * HOUR)

        self.assertEqual(text, "Up 3 hours (Paused)")

    def test_dormant_is_paused(self):
        text = self.status("paused", "dormant", started=NOW - 2)

        self.assertEqual(text, "Up 2 seconds (Paused)")

    def test_restarting_shows_finish_age(self):
        text = self.status(
            "restarting",
            started=NOW - HOUR,
            finished=NOW - 30,
            exit_code=137,
        )

        self.assertEqual(text, "Restarting (137) 30 seconds ago")

    def test_restarting_flag_wins(self):
        text = self.status(
            "running", started=NOW - HOUR, finished=NOW - 1, restarting=True
        )

        self.assertEqual(text, "Restarting (0) 1 second ago")

    def test_running_before_removal(self):
        text = self.status("running", started=NOW - 10, removing=True)

        self.assertEqual(text, "Up 10 seconds")

    def test_removing_flag(self):
        text = self.status("exited", started=NOW - 10, finished=NOW - 5, removing=True)

        self.assertEqual(text, "Removal In Progress")

    def test_removing_state(self):
        text = self.status("removing", started=NOW - 10, finished=NOW - 5)

        self.assertEqual(text, "Removal In Progress")

    def test_dead(self):
        text = self.status("dead", "killed", started=NOW - 10, finished=NOW - 5)

        self.assertEqual(text, "Dead")

    def test_created_never_started(self):
        text = self.status("created", "booting")

        self.assertEqual(text, "Created")

    def test_created_without_me(self):
        text = self.status("created")

        self.assertEqual(text, "Created")

    def test_created_booting_after_start(self):
        text = self.status("created", "booting", started=NOW - 1)

        self.assertEqual(text, "Created (booting)")

    def test_created_preparing_after_start(self):
        text = self.status("created", "preparing", started=NOW - 1)

        self.assertEqual(text, "Created (preparing)")

    def test_migrating_is_error(self):
        text = self.status("error", "migrating", started=NOW - HOUR)

        self.assertEqual(text, "Error (migrating)")

    def test_exited_shows_code_and_age(self):
        text = self.status(
            "exited",
            "terminated",
            started=NOW - DAY,
            finished=NOW - 2 * DAY,
            exit_code=3,
        )

        self.assertEqual(text, "Exited (3) 2 days ago")

    def test_exited_never_started(self):
        text = self.status("exited", finished=NOW - 5)

        self.assertEqual(text, "Created")

    def test_exited_without_finish_time(self):
        text = self.status("exited", started=NOW - 5)

        self.assertEqual(text, "")


class StateFlagsTests(SynchronousTestCase):
    """The booleans of inspect's State object."""

    def test_running_flags(self):
        flags = states.state_flags("running")

        self.assertEqual(
            flags,
            {
                "Running": True,
                "Paused": False,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
            },
        )

    def test_paused_is_also_running(self):
        flags = states.state_flags("paused")

        self.assertTrue(flags["Running"])
        self.assertTrue(flags["Paused"])

    def test_restarting_is_also_running(self):
        flags = states.state_flags("restarting")

        self.assertTrue(flags["Running"])
        self.assertTrue(flags["Restarting"])

    def test_dead_flags(self):
        flags = states.state_flags("dead")

        self.assertTrue(flags["Dead"])
        self.assertFalse(flags["Running"])

    def test_error_not_running(self):
        flags = states.state_flags("error")

        self.assertFalse(flags["Running"])

    def test_stopped_states_not_running(self):
        for state in ("created", "exited", "removing"):
            flags = states.state_flags(state)

            self.assertFalse(any(flags.values()), state)


class StatusFilterTests(SynchronousTestCase):
    """Validation of status= filter values."""

    def test_known_values_accepted(self):
        for value in states.STATE_FILTER_VALUES:
            self.assertEqual(states.validate_status_filter(value), value)

    def test_error_value_accepted(self):
        self.assertEqual(states.validate_status_filter("error"), "error")

    def test_unknown_value_message(self):
        error = self.assertRaises(
            InvalidParameter, states.validate_status_filter, "xyz"
        )

        self.assertEqual(str(error), "invalid filter 'status=xyz'")

    def test_unknown_value_is_400(self):
        error = self.assertRaises(
            InvalidParameter, states.validate_status_filter, "Running"
        )

        self.assertEqual(error.status, 400)


class HumanDurationTests(SynchronousTestCase):
    """go-units HumanDuration, checked on each side of every threshold."""

    CASES = [
        (-5, "Less than a second"),
        (0, "Less than a second"),
        (0.999, "Less than a second"),
        (1, "1 second"),
        (1.999, "1 second"),
        (2, "2 seconds"),
        (59.999, "59 seconds"),
        (60, "About a minute"),
        (119.999, "About a minute"),
        (120, "2 minutes"),
        (59 * MINUTE + 59, "59 minutes"),
        (HOUR, "About an hour"),
        (HOUR + 29 * MINUTE + 59, "About an hour"),
        (HOUR + 30 * MINUTE, "2 hours"),
        (47 * HOUR + 29 * MINUTE, "47 hours"),
        (47 * HOUR + 30 * MINUTE, "2 days"),
        (3 * DAY + 11 * HOUR, "3 days"),
        (3 * DAY + 12 * HOUR, "4 days"),
        (14 * DAY - 1, "14 days"),
        (14 * DAY, "2 weeks"),
        (60 * DAY - 1, "9 weeks"),
        (60 * DAY, "2 months"),
        (730 * DAY - 1, "24 months"),
        (730 * DAY, "2 years"),
        (3 * 365 * DAY, "3 years"),
    ]

    def test_boundaries(self):
        for seconds, expected in self.CASES:
            self.assertEqual(timeutil.human_duration(seconds), expected, seconds)

    def test_ns_variant_truncates_seconds(self):
        text = timeutil.human_duration_ns(59_999_999_999)

        self.assertEqual(text, "59 seconds")


class Rfc3339FormatTests(SynchronousTestCase):
    """RFC3339Nano as Go formats it, and Docker's fixed-width log timestamp."""

    def test_zero_time_for_none(self):
        self.assertEqual(timeutil.format_rfc3339_nano(None), "0001-01-01T00:00:00Z")

    def test_zero_time_for_zero(self):
        self.assertEqual(timeutil.format_rfc3339_nano(0), "0001-01-01T00:00:00Z")

    def test_trailing_zeros_trimmed(self):
        text = timeutil.format_rfc3339_nano_ns(1_796_398_991_123_450_000)

        self.assertEqual(text, "2026-12-04T15:43:11.12345Z")

    def test_whole_second_has_no_dot(self):
        text = timeutil.format_rfc3339_nano(1_796_398_991.0)

        self.assertEqual(text, "2026-12-04T15:43:11Z")

    def test_float_keeps_microseconds(self):
        text = timeutil.format_rfc3339_nano(1_796_398_991.000001)

        self.assertEqual(text, "2026-12-04T15:43:11.000001Z")

    def test_nanoseconds_kept(self):
        text = timeutil.format_rfc3339_nano_ns(1_796_398_991_000_000_001)

        self.assertEqual(text, "2026-12-04T15:43:11.000000001Z")

    def test_fixed_timestamp_width(self):
        text = timeutil.format_fixed_timestamp(1_796_398_991.5)

        self.assertEqual(text, "2026-12-04T15:43:11.500000000Z")
        self.assertEqual(len(text), 30)

    def test_fixed_timestamp_before_1970(self):
        text = timeutil.format_fixed_timestamp_ns(-1)

        self.assertEqual(text, "1969-12-31T23:59:59.999999999Z")
