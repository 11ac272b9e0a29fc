/** Where `kaos train get`, `kaos render` and `kaos template get` write: a directory given with `-o`. */
import { existsSync, lstatSync, readdirSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { KaosError } from "./errors.js";
import { STATE_DIR_NAME } from "./layout.js";

function lexists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** `path` as the file system resolves the part of it that exists, so that a symlink into a state directory is seen. */
function resolvedAsFarAsItExists(path: string): string {
  for (let existing = path; ; existing = dirname(existing)) {
    try {
      return join(realpathSync(existing), relative(existing, path));
    } catch {
      if (dirname(existing) === existing) return path;
    }
  }
}

/** The state directory (`.../.kaos`) that holds `path`, or undefined. */
function stateDirHolding(path: string): string | undefined {
  for (const candidate of [path, resolvedAsFarAsItExists(path)]) {
    const parts = candidate.split(sep);
    const at = parts.indexOf(STATE_DIR_NAME);
    if (at > 0) return parts.slice(0, at + 1).join(sep);
  }
  return undefined;
}

/**
 * `dir` (the value of `flag`) as an absolute path, refused when it is empty
 * (an unset shell variable would otherwise name the working directory), an
 * existing file, or inside a project's `.kaos/`: kaos owns what is there, and
 * a name it does not know appearing there fails the jobs running meanwhile.
 */
export function destinationDir(dir: string, options: { flag: string; expected: string }): string {
  if (dir.trim() === "") {
    throw new KaosError("USAGE", `${options.flag}: expected ${options.expected}, found an empty value`, {
      hint: `pass ${options.flag} DIR`,
    });
  }
  const destination = resolve(dir);
  const stateDir = stateDirHolding(destination);
  if (stateDir !== undefined) {
    throw new KaosError(
      "USAGE",
      `${options.flag} ${destination}: inside ${stateDir}, kaos's state directory; expected ${options.expected} outside it`,
      { hint: `kaos owns what ${STATE_DIR_NAME}/ holds; pass ${options.flag} DIR elsewhere` },
    );
  }
  // The destination, or the nearest of its parents that is there, must be a directory (or a link to one) for it to be made.
  for (let path = destination; ; path = dirname(path)) {
    if (!lexists(path)) continue;
    if (!existsSync(path)) {
      throw new KaosError("USAGE", `${path} is a symlink to ${readlinkSync(path)}, which does not exist; expected ${options.expected}`, {
        hint: `pass ${options.flag} DIR`,
      });
    }
    if (!statSync(path).isDirectory()) {
      throw new KaosError("USAGE", `${path} is a file; expected ${options.expected}`, { hint: `pass ${options.flag} DIR` });
    }
    return destination;
  }
}

/** `dir` as an absolute path, refused when it holds anything (and as `destinationDir` refuses it). */
export function emptyDestination(dir: string): string {
  const destination = destinationDir(dir, { flag: "-o", expected: "a new or empty directory" });
  if (existsSync(destination) && readdirSync(destination).length > 0) {
    throw new KaosError("USAGE", `${destination} already exists and is not empty; expected a new or empty directory`, {
      hint: "pass -o DIR",
    });
  }
  return destination;
}
