/**
 * How kaos talks to the terminal: colours only on a TTY and never with
 * NO_COLOR, plain lines when piped, and nothing but JSON under --json.
 */
import pc from "picocolors";

export type Colors = ReturnType<typeof pc.createColors>;

export function colorEnabled(stream: NodeJS.WriteStream = process.stdout): boolean {
  if (process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== "") return false;
  if (process.env.FORCE_COLOR !== undefined && process.env.FORCE_COLOR !== "0") return true;
  return stream.isTTY === true && process.env.TERM !== "dumb";
}

export function colors(stream: NodeJS.WriteStream = process.stdout): Colors {
  return pc.createColors(colorEnabled(stream));
}

export function isInteractive(stream: NodeJS.WriteStream = process.stdout): boolean {
  return stream.isTTY === true && process.env.TERM !== "dumb" && process.env.CI === undefined;
}

/** A short form of a hex key for people; JSON always carries the full key. */
export function shortKey(key: string | undefined | null): string {
  return key ? key.slice(0, 12) : "-";
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

/** Pads a table's columns to the widest cell, ignoring ANSI colour codes. */
export function table(rows: string[][]): string {
  // eslint-disable-next-line no-control-regex
  const visible = (cell: string) => cell.replace(/\u001b\[[0-9;]*m/g, "").length;
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, index) => (widths[index] = Math.max(widths[index] ?? 0, visible(cell))));
  return rows
    .map((row) =>
      row
        .map((cell, index) => (index === row.length - 1 ? cell : cell + " ".repeat((widths[index] ?? 0) - visible(cell))))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
