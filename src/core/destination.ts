/** Where `kaos train get` copies a job to: a new or empty directory. */
import { existsSync, readdirSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { KaosError } from "./errors.js";

/** `dir` as an absolute path, refused when it holds anything. */
export function emptyDestination(dir: string): string {
  const destination = resolve(dir);
  if (existsSync(destination) && !statSync(destination).isDirectory()) {
    throw new KaosError("USAGE", `${destination} is a file; expected a new or empty directory`, { hint: "pass -o DIR" });
  }
  if (existsSync(destination) && readdirSync(destination).length > 0) {
    throw new KaosError("USAGE", `${destination} already exists and is not empty; expected a new or empty directory`, {
      hint: "pass -o DIR",
    });
  }
  return destination;
}
