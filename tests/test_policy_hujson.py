import json

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from wire.policy import PolicyError
from wire.policy.hujson import parse_hujson, position


class AcceptedTests(unittest.TestCase):
    def test_comments_and_trailing_commas(self):
        text = """// a policy
        {
          /* block
             comment */ "acls": [1, 2, /* inline */ 3,], // after
          "x": {"y": null,},
        }
        // the end"""
        self.assertEqual(parse_hujson(text), {"acls": [1, 2, 3], "x": {"y": None}})

    def test_comment_markers_inside_strings_are_text(self):
        self.assertEqual(parse_hujson('["a//b", "/* c */", "http://x"]'), ["a//b", "/* c */", "http://x"])

    def test_escapes(self):
        self.assertEqual(parse_hujson(r'"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"'), '"\\/\b\f\n\r\t\u00e9\U0001F600')

    def test_plain_json_values(self):
        for text, value in [("0", 0), ("-1.5e3", -1500.0), ("true", True), ("false", False), ("null", None),
                            ("[]", []), ("{}", {}), ('"\u00fc"', "\u00fc")]:
            self.assertEqual(parse_hujson(text), value, text)

    def test_byte_order_mark_and_crlf(self):
        self.assertEqual(parse_hujson('\ufeff{\r\n"a": 1\r\n}'), {"a": 1})


class SyntaxErrorTests(unittest.TestCase):
    def assert_error(self, text, line, column, words):
        with self.assertRaises(PolicyError) as caught:
            parse_hujson(text)
        message = str(caught.exception)
        self.assertTrue(message.startswith(f"policy line {line}, column {column}: "), message)
        self.assertIn(words, message)

    def test_each_error_names_line_and_column(self):
        cases = [
            ("", 1, 1, "empty"),
            ("  // only a comment\n", 2, 1, "empty"),
            ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}'"),
            ("[1 2]", 1, 4, "expected ',' or ']'"),
            ('{"a" 1}', 1, 6, "expected ':'"),
            ("{a: 1}", 1, 2, "expected a string key"),
            ("[1,,]", 1, 4, "expected a value"),
            ("[", 1, 2, "expected a value, found the end"),
            ('{"a": 1', 1, 8, "expected ',' or '}', found the end"),
            ('\n  "abc', 2, 3, "unterminated string"),
            ('"ab\\', 1, 1, "unterminated string"),
            ("[1] /* never closed", 1, 5, "unterminated /* comment */"),
            ("[1] / 2", 1, 5, "a comment starts with"),
            ("[1] 2", 1, 5, "unexpected text after the end"),
            ('"a\\x"', 1, 3, "invalid escape \\x"),
            ('"\\u12G4"', 1, 2, "four hex digits"),
            ('"a\nb"', 1, 3, "control character"),
            ('{"a": 1, "a": 2}', 1, 10, "duplicate key 'a'"),
            ("[01]", 1, 2, "invalid number"),
            ("[1.]", 1, 2, "invalid number"),
            ("[-]", 1, 2, "invalid number"),
            ("[tru]", 1, 2, "expected a value, found 't'"),
            ("[" * 70, 1, 66, "nested deeper than 64"),
        ]
        for text, line, column, words in cases:
            with self.subTest(text=text):
                self.assert_error(text, line, column, words)

    def test_position(self):
        self.assertEqual(position("ab\ncd", 0), (1, 1))
        self.assertEqual(position("ab\ncd", 4), (2, 2))

    @settings(max_examples=300)
    @given(st.text(max_size=60))
    def test_any_text_parses_or_is_refused_cleanly(self, text):
        try:
            parse_hujson(text)
        except PolicyError as e:
            self.assertRegex(str(e), r"^policy line \d+, column \d+: ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

NOISE = [" ", "\n", "\t", "// note */ \"x\"\n", "/* a // b */", "/**/", "\r\n", "/* multi\nline */"]


def dump_with_noise(value, draw):
    """``value`` as HuJSON: comments and blanks between every token, and trailing commas at random."""
    noise = lambda: "".join(draw(st.lists(st.sampled_from(NOISE), max_size=2)))  # noqa: E731
    if isinstance(value, list):
        items = [noise() + dump_with_noise(v, draw) + noise() for v in value]
        trailing = "," if value and draw(st.booleans()) else ""
        return "[" + ",".join(items) + trailing + noise() + "]"
    if isinstance(value, dict):
        items = [noise() + json.dumps(k) + noise() + ":" + noise() + dump_with_noise(v, draw) + noise() for k, v in value.items()]
        trailing = "," if value and draw(st.booleans()) else ""
        return "{" + ",".join(items) + trailing + noise() + "}"
    return json.dumps(value, ensure_ascii=draw(st.booleans()))


class RoundTripTests(unittest.TestCase):
    @settings(max_examples=300)
    @given(json_values, st.data())
    def test_json_with_comments_and_trailing_commas_parses_to_the_same_value(self, value, data):
        text = dump_with_noise(value, data.draw)
        self.assertEqual(parse_hujson(text), value, text)

    @settings(max_examples=200)
    @given(json_values)
    def test_agrees_with_json_on_plain_json(self, value):
        text = json.dumps(value)
        self.assertEqual(parse_hujson(text), json.loads(text))
