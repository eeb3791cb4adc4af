"""``wire up --join-file PATH`` and ``--join -``: the join token never on the
command line; a file others may read is refused, as ssh refuses a key."""

from __future__ import annotations

import contextlib
import io
import json
import os

from twisted.internet import reactor
from twisted.trial import unittest

from tests.test_node_life import AuthMesh, launching
from tests.test_ops import short_tempdir
from wire import cli, ops
from wire.cli.parser import build_parser, parse
from wire.ops.joinsource import MAX_TOKEN_CHARS


class ReadTests(unittest.TestCase):
    def token_file(self, content: bytes, mode: int = 0o600) -> str:
        path = os.path.join(short_tempdir(self), "token")
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def assertRefused(self, read, *words: str):
        with self.assertRaises(ops.OpError) as caught:
            read()
        for word in words:
            self.assertIn(word, str(caught.exception))

    def test_a_private_file_gives_its_token_stripped(self):
        self.assertEqual(ops.read_join_file(self.token_file(b"  wire1.abc\n\n")), "wire1.abc")
        self.assertEqual(ops.read_join_file(self.token_file(b"wire1.abc", 0o400)), "wire1.abc")

    def test_a_file_others_may_read_or_write_is_refused(self):
        for mode in (0o644, 0o640, 0o604, 0o620, 0o602):
            path = self.token_file(b"wire1.abc", mode)
            self.assertRefused(lambda: ops.read_join_file(path), path, f"mode {mode:04o}", f"chmod 600 {path}")

    def test_what_is_no_token_file_is_said(self):
        directory = short_tempdir(self)
        os.chmod(directory, 0o700)
        self.assertRefused(lambda: ops.read_join_file(os.path.join(directory, "nope")), "cannot open", "No such file")
        self.assertRefused(lambda: ops.read_join_file(directory), "not a regular file")
        fifo = os.path.join(directory, "fifo")
        os.mkfifo(fifo, 0o600)
        self.assertRefused(lambda: ops.read_join_file(fifo), "not a regular file")
        self.assertRefused(lambda: ops.read_join_file(self.token_file(b" \n")), "is empty")
        self.assertRefused(lambda: ops.read_join_file(self.token_file(b"\xff\xfe")), "not text")
        self.assertRefused(lambda: ops.read_join_file(self.token_file(b"x" * (MAX_TOKEN_CHARS + 1))), "not a join token")

    def test_stdin(self):
        self.assertEqual(ops.read_join_stream(io.StringIO("wire1.abc\n")), "wire1.abc")
        self.assertRefused(lambda: ops.read_join_stream(io.StringIO("")), "--join -", "is empty")

    def test_join_and_join_file_exclude_each_other(self):
        parser = build_parser()
        with self.assertRaises(SystemExit):
            parse(parser, ["up", "--join", "wire1.x", "--join-file", "/t"])
        self.assertEqual(parse(parser, ["up", "--join-file", "/t"]).join_file, "/t")
        self.assertEqual(parse(parser, ["up", "--join", "-"]).join, "-")

    def test_the_help_says_how_to_keep_the_token_off_the_command_line(self):
        out = io.StringIO()
        with self.assertRaises(SystemExit):
            with contextlib.redirect_stdout(out):
                parse(build_parser(), ["up", "--help"])
        help_text = " ".join(out.getvalue().split())
        self.assertIn("--join-file PATH", help_text)
        self.assertIn("--join - to read it from stdin", help_text)


class JoinTests(unittest.TestCase):
    """The same join as ``--join TOKEN``, with the token from a file or stdin."""

    timeout = 30

    async def wire_up(self, mesh, *argv: str, stdin: str = "") -> tuple[int, dict | None, str]:
        out, err = io.StringIO(), io.StringIO()
        argv_ = ["--config-dir", mesh.config_dir, "up", *argv, "--name", "web1", "--json"]
        code = await cli.run(reactor, argv_, out, err, make_context=lambda r, d: mesh.context(), stdin=io.StringIO(stdin))
        return code, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()

    async def test_join_file(self):
        mesh = AuthMesh(self)
        launching(self, mesh)
        path = os.path.join(short_tempdir(self), "token")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(mesh.token() + "\n")
        code, result, err = await self.wire_up(mesh, "--join-file", path)
        self.assertEqual(code, 0, err)
        assert result is not None
        self.assertEqual((result["node_name"], result["already_running"]), ("web1", False))

    async def test_join_from_stdin(self):
        mesh = AuthMesh(self)
        launching(self, mesh)
        code, result, err = await self.wire_up(mesh, "--join", "-", stdin=f"  {mesh.token()}\n")
        self.assertEqual(code, 0, err)
        assert result is not None
        self.assertEqual(result["node_name"], "web1")

    async def test_a_world_readable_file_is_refused_before_anything_starts(self):
        mesh = AuthMesh(self)
        path = os.path.join(short_tempdir(self), "token")
        with open(path, "w") as f:
            f.write(mesh.token())
        os.chmod(path, 0o644)
        code, result, err = await self.wire_up(mesh, "--join-file", path)
        self.assertEqual(code, 1)
        self.assertIn(f"is accessible by others (mode 0644): the join token is a secret; chmod 600 {path}", err)
        assert result is not None
        self.assertFalse(result["ok"])
        mesh.runner.assert_all_called()  # nothing was started
        self.assertFalse(os.path.exists(os.path.join(mesh.config_dir, "join.json")))

    async def test_a_bad_token_in_a_file_is_a_bad_token(self):
        mesh = AuthMesh(self)
        path = os.path.join(short_tempdir(self), "token")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("not-a-token\n")
        code, _, err = await self.wire_up(mesh, "--join-file", path)
        self.assertEqual(code, 1)
        self.assertIn("wire up: --join: ", err)
