/**
 * How kaos talks to the terminal: colours only on a TTY and never with
 * NO_COLOR, plain lines when piped, and nothing but JSON under --json.
 */
import pc from "picocolors";
import { withoutColours } from "../core/format.js";

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

/** Pads a table's columns to the widest cell, ignoring ANSI colour codes. */
export function table(rows: string[][]): string {
  const visible = (cell: string) => withoutColours(cell).length;
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, index) => {
      widths[index] = Math.max(widths[index] ?? 0, visible(cell));
    });
  }
  return rows
    .map((row) =>
      row
        .map((cell, index) => (index === row.length - 1 ? cell : cell + " ".repeat((widths[index] ?? 0) - visible(cell))))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

let resultPrinted = false;

/** Prints a command's result under --json: the one JSON value its stdout holds. */
export function printJson(value: unknown): void {
  resultPrinted = true;
  process.stdout.write(jsonText(value));
}

/** A JSON value as kaos prints it: indented, on lines of its own. */
export function jsonText(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** Whether a command printed its JSON result, so that a failure after it adds no second value to stdout. */
export function jsonResultPrinted(): boolean {
  return resultPrinted;
}
