/**
 * Where a JSON text stops being JSON, for people. JSON.parse names a position
 * for some mistakes only: a trailing comma before `}` gives "Unexpected token
 * '}'" and nothing to find it by in a long file. Loaded only when a text has
 * already failed to parse.
 */
import { parse, printParseErrorCode } from "jsonc-parser";

const EXPECTED: Record<ReturnType<typeof printParseErrorCode>, string> = {
  InvalidSymbol: "expected a JSON value (keys and strings take double quotes; NaN and comments are not JSON)",
  InvalidNumberFormat: "expected a number such as 0.5 or 1e-3",
  PropertyNameExpected: "expected a key in double quotes (JSON allows no comma after the last entry)",
  ValueExpected: "expected a value (JSON allows no comma after the last item)",
  ColonExpected: "expected ':' after the key",
  CommaExpected: "expected ',' before the next entry",
  CloseBraceExpected: "expected '}' to close the object",
  CloseBracketExpected: "expected ']' to close the list",
  EndOfFileExpected: "expected nothing after the JSON value",
  InvalidCommentToken: "expected no comment: JSON has none",
  UnexpectedEndOfComment: "expected no comment: JSON has none",
  UnexpectedEndOfString: "expected the string to be closed with a double quote",
  UnexpectedEndOfNumber: "expected a number such as 0.5 or 1e-3",
  InvalidUnicode: "expected four hexadecimal digits after \\u",
  InvalidEscapeCharacter: "expected one of JSON's escapes (\\n, \\t, \\\", \\\\, \\uXXXX)",
  InvalidCharacter: "expected no control character (a tab, a newline) inside a string: escape it (\\t, \\n)",
  "<unknown ParseErrorCode>": "expected JSON",
};

export interface JsonSyntaxProblem {
  /** 1-based, as editors count. */
  line: number;
  column: number;
  /** What is wrong there, with the text found when there is any: `found ]; expected a value ...`. */
  detail: string;
}

/** The first syntax error of `text` with its line and column, or undefined when it is JSON. */
export function jsonSyntaxProblem(text: string): JsonSyntaxProblem | undefined {
  const errors: { error: number; offset: number; length: number }[] = [];
  parse(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  const first = errors[0];
  if (first === undefined) return undefined;
  const before = text.slice(0, first.offset);
  const lineStart = before.lastIndexOf("\n") + 1;
  const found = text.slice(first.offset, first.offset + Math.min(first.length, 40));
  const what = EXPECTED[printParseErrorCode(first.error)];
  return {
    line: before.split("\n").length,
    column: first.offset - lineStart + 1,
    detail: found.trim() === "" ? what : `found ${found}; ${what}`,
  };
}
