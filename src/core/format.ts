/**
 * Text for people, wherever it is printed: sizes, durations, keys, params,
 * and any string from outside kaos made safe for a terminal.
 */
/** A short form of a hex key for people; JSON always carries the full key. */
export function shortKey(key: string | undefined | null): string {
  return key ? key.slice(0, 12) : "-";
}

/** `1 job`, `2 jobs`: a count and its noun, which takes an `s` unless there is one. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** A size or, with "/s" after it, a rate: `999 B`, `662 B/s`, `0.25 B/s`, `392.9 MiB`. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit > 0) return `${value.toFixed(1)} ${units[unit]}`;
  // Whole bytes as they are; a rate's fraction of a byte only to three significant digits.
  return `${Math.abs(value) >= 100 ? Math.round(value) : Number(value.toPrecision(3))} ${units[0]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const minutes = Math.floor(seconds / 60);
  const rest = Math.round(seconds - minutes * 60);
  if (minutes < 60) return `${minutes}m${String(rest).padStart(2, "0")}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`;
}

/** Text with its colour codes (ANSI SGR sequences) taken out, as it reads on a terminal that shows none. */
export function withoutColours(text: string): string {
  return text.replace(/\u001b\[[0-9;]*m/g, "");
}

/**
 * Characters never sent raw to a terminal: C0 controls (newline, ESC, BEL),
 * DEL, C1 controls (U+009B alone starts a control sequence on some
 * terminals), line and paragraph separators, and the bidirectional controls
 * that make text display in another order than it reads (U+202E).
 */
const UNSAFE_CHARS = "\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069";
const UNSAFE = new RegExp(`[${UNSAFE_CHARS}]`);
const UNSAFE_ALL = new RegExp(`[${UNSAFE_CHARS}]`, "g");
const UNSAFE_BUT_NEWLINE = new RegExp(`[${UNSAFE_CHARS.replace("\\u0000-\\u001f", "\\u0000-\\u0009\\u000b-\\u001f")}]`, "g");

/** `\n`, `\t` and the like where JSON has a short escape, else `\u009b`. */
function escapeChar(char: string): string {
  const json = JSON.stringify(char);
  return json.length === 4 ? json.slice(1, -1) : `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

/** A string as JSON writes it, with what JSON leaves raw (DEL, C1, bidi controls) escaped too. */
export function quoteText(text: string): string {
  return JSON.stringify(text).replace(UNSAFE_ALL, escapeChar);
}

/**
 * A string that came from outside kaos (a job, a bundle, a manifest, a params
 * file), made safe to print as one line: unchanged when it holds no control
 * character, else quoted and escaped as JSON does (`"a\u001b[2Jb"`), so that
 * it can neither drive the terminal nor forge a line.
 */
export function displayText(text: string): string {
  return UNSAFE.test(text) ? quoteText(text) : text;
}

/**
 * A line of kaos's own words that may quote outside text (a reason naming a
 * file a job wrote, a parse error citing what it read): every control
 * character, line breaks included, shown escaped in place.
 */
export function displayLine(text: string): string {
  return text.replace(UNSAFE_ALL, escapeChar);
}

/** As displayLine, for a message of several lines (an error, a note): its line breaks stay. */
export function displayMessage(text: string): string {
  return text.replace(UNSAFE_BUT_NEWLINE, escapeChar);
}

/** A key or string value shown bare in `key=value` pairs: nothing that reads as a separator, a quote or a JSON literal. */
const BARE_PARAM = /^[^\s=,"'\\]+$/;
const JSON_LITERAL = /^(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)$/;

function paramKeyText(key: string): string {
  return BARE_PARAM.test(key) && !UNSAFE.test(key) ? key : quoteText(key);
}

/** One param's value as `paramsText` shows it. */
export function paramValueText(value: unknown): string {
  if (typeof value !== "string") return displayLine(JSON.stringify(value) ?? String(value));
  return BARE_PARAM.test(value) && !UNSAFE.test(value) && !JSON_LITERAL.test(value) ? value : quoteText(value);
}

/**
 * A job's params for people, `C=1 kernel=linear`: a key or a string value
 * that holds `=`, `,`, a space, a quote or a control character, or a string
 * that reads as a number, boolean or null, is quoted as JSON, so that
 * `"a=b"=c` and `a="b=c"` stay apart.
 */
export function paramsText(params: Record<string, unknown>): string {
  return Object.entries(params)
    .map(([key, value]) => `${paramKeyText(key)}=${paramValueText(value)}`)
    .join(" ");
}

/**
 * A metric for a table: 4 significant digits (`0.3333`, `1.235e-7`), where
 * `--json` carries the exact number. Whole numbers stay whole.
 */
export function metricNumberText(value: number): string {
  if (!Number.isFinite(value) || Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(4)));
}
