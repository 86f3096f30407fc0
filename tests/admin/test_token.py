"""Where the admin token comes from: the configuration, else a 0600 file in the state directory."""

import os
import stat

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.token import TOKEN_FILE, resolve_token
from gateway.confschema import Secret


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class ResolveTokenTests(SynchronousTestCase):
    def setUp(self):
        self.state_dir = self.mktemp()  # not created yet, as on a first start

    def token_path(self):
        return os.path.join(self.state_dir, TOKEN_FILE)

    def test_a_configured_token_wins_and_nothing_is_written(self):
        configured = Secret("from-the-config")
        self.assertIs(resolve_token(configured, self.state_dir), configured)
        self.assertFalse(os.path.exists(self.state_dir))

    def test_without_one_a_token_is_generated_into_a_private_file(self):
        with capturedLogs() as events:
            token = resolve_token(Secret(""), self.state_dir)
        self.assertGreaterEqual(len(token.reveal()), 40)
        with open(self.token_path()) as f:
            self.assertEqual(f.read().strip(), token.reveal())
        self.assertEqual(mode(self.token_path()), 0o600)
        self.assertEqual(mode(self.state_dir), 0o700)
        [event] = events
        self.assertEqual(event["path"], self.token_path())
        self.assertNotIn(token.reveal(), repr(event))

    def test_the_generated_token_is_reused(self):
        first = resolve_token(Secret(""), self.state_dir)
        with capturedLogs() as events:
            second = resolve_token(Secret(""), self.state_dir)
        self.assertEqual(second.reveal(), first.reveal())
        self.assertIn("read from", events[0]["log_format"])

    def test_a_blank_file_gets_a_new_token_and_a_private_mode(self):
        os.makedirs(self.state_dir)
        with open(self.token_path(), "w") as f:
            f.write("\n")
        os.chmod(self.token_path(), 0o644)
        token = resolve_token(Secret(""), self.state_dir)
        self.assertTrue(token)
        self.assertEqual(mode(self.token_path()), 0o600)

    def test_a_token_file_others_can_read_is_used_with_a_warning(self):
        os.makedirs(self.state_dir)
        with open(self.token_path(), "w") as f:
            f.write("operator-chosen\n")
        os.chmod(self.token_path(), 0o644)
        with capturedLogs() as events:
            token = resolve_token(Secret(""), self.state_dir)
        self.assertEqual(token.reveal(), "operator-chosen")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn, LogLevel.info])
