/**
 * `kaos template list|get`: example projects shipped in the package's
 * `examples/` directory and described by `examples/index.json`.
 */
import { appendFileSync, copyFileSync, constants, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, relative, sep } from "node:path";
import { shellQuote } from "../backends/kubernetes/specs.js";
import { destinationDir } from "../core/destination.js";
import { lstatOrUndefined } from "../core/disk.js";
import { KaosError } from "../core/errors.js";
import { plural } from "../core/format.js";
import { packageRoot } from "../core/layout.js";
import { printJson, table } from "./output.js";

interface TemplateEntry {
  name: string;
  description: string;
  path: string;
}

const EXAMPLES_DIR = join(packageRoot(), "examples");

/** Never part of a template, wherever they appear inside it: kaos's state, Python's caches, installed packages. */
const LEFT_OUT = new Set([".kaos", "__pycache__", "node_modules"]);

/**
 * npm leaves every file named `.gitignore` out of a package, so templates ship
 * theirs as `gitignore` and the copy gets its real name back.
 */
const RENAMED: Readonly<Record<string, string>> = { gitignore: ".gitignore" };

function catalogue(): TemplateEntry[] {
  return JSON.parse(readFileSync(join(EXAMPLES_DIR, "index.json"), "utf8")) as TemplateEntry[];
}

export function templateNames(): string[] {
  return catalogue().map((entry) => entry.name);
}

export async function templateListCommand(options: { json?: boolean }): Promise<number> {
  const templates = catalogue();
  if (options.json) {
    printJson(templates.map(({ name, description }) => ({ name, description })));
  } else {
    process.stdout.write(`${table([["NAME", "DESCRIPTION"], ...templates.map((t) => [t.name, t.description])])}\n`);
  }
  return 0;
}

/** A file of the template: where it is, and where it goes relative to the destination. */
interface TemplateFile {
  source: string;
  target: string;
  size: number;
}

/**
 * The template's files, found relative to its own root: the package itself
 * is installed under node_modules/, so only the paths inside the template
 * decide what is left out.
 */
function templateFiles(root: string): { files: TemplateFile[]; dirs: string[] } {
  const files: TemplateFile[] = [];
  const dirs: string[] = [];
  const walk = (relativeDir: string) => {
    for (const entry of readdirSync(join(root, relativeDir), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (LEFT_OUT.has(entry.name)) continue;
      const from = relativeDir === "" ? entry.name : join(relativeDir, entry.name);
      if (entry.isDirectory()) {
        dirs.push(from);
        walk(from);
      } else if (entry.isFile()) {
        const target = join(relativeDir, RENAMED[entry.name] ?? entry.name);
        files.push({ source: join(root, from), target, size: statSync(join(root, from)).size });
      }
    }
  };
  walk("");
  return { files, dirs };
}

/** Lines of the template's .gitignore that an existing one lacks. */
function missingIgnoreLines(template: string, existing: string): string[] {
  const present = new Set(existing.split(/\r?\n/).map((line) => line.trim()));
  return template
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#") && !present.has(line) && !present.has(line.replace(/\/$/, "")));
}

/** How to name the destination to the user: relative to the working directory when inside it. */
function displayPath(destination: string): string {
  const fromCwd = relative(process.cwd(), destination);
  if (fromCwd === "") return ".";
  return fromCwd === ".." || fromCwd.startsWith(`..${sep}`) || isAbsolute(fromCwd) ? destination : fromCwd;
}

function shellWord(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : shellQuote(path);
}

export async function templateGetCommand(options: { name: string; out?: string }): Promise<number> {
  const templates = catalogue();
  const template = templates.find((entry) => entry.name === options.name);
  if (!template) {
    const names = templates.map((t) => t.name);
    if (options.name.trim() === "") {
      throw new KaosError("USAGE", `--name: found an empty value; expected a template name, one of: ${names.join(", ")}`, {
        hint: "run `kaos template list` to see them",
      });
    }
    const { similarName } = await import("../core/suggest.js");
    const meant = similarName(options.name, names);
    throw new KaosError(
      "TEMPLATE_NOT_FOUND",
      `--name ${options.name}: no such template; ${meant === undefined ? "" : `did you mean "${meant}"? `}expected one of: ${names.join(", ")}`,
      {
        hint: "run `kaos template list` to see them",
      },
    );
  }
  const destination = destinationDir(options.out ?? template.name, {
    flag: "-o",
    expected: "a directory (new, empty, or without the template's files)",
  });
  const { files, dirs } = templateFiles(join(EXAMPLES_DIR, template.path));
  if (files.length === 0) {
    throw new KaosError(
      "IO",
      `template ${template.name}: no files found in ${join(EXAMPLES_DIR, template.path)}; the kaos-ml package is incomplete`,
      {
        hint: "reinstall kaos-ml",
      },
    );
  }

  // Everything is checked before anything is written: a refused copy leaves the directory as it was.
  const blocked = dirs.filter((dir) => {
    const found = lstatOrUndefined(join(destination, dir));
    return found !== undefined && !found.isDirectory();
  });
  const merged: { file: TemplateFile; lines: string[] }[] = [];
  for (const file of files) {
    const target = join(destination, file.target);
    const found = lstatOrUndefined(target);
    if (found === undefined) continue;
    if (file.target === ".gitignore" && found.isFile()) {
      // An existing .gitignore is extended rather than refused: nearly every project has one.
      merged.push({ file, lines: missingIgnoreLines(readFileSync(file.source, "utf8"), readFileSync(target, "utf8")) });
    } else {
      blocked.push(file.target);
    }
  }
  if (blocked.length > 0) {
    const shown = blocked.slice(0, 10).map((path) => `  ${join(displayPath(destination), path)}`);
    if (blocked.length > shown.length) shown.push(`  ... and ${blocked.length - shown.length} more`);
    throw new KaosError(
      "USAGE",
      `copying template ${template.name} into ${displayPath(destination)} would overwrite ${blocked.length === 1 ? "this file" : `these ${blocked.length} files`}; nothing was copied\n${shown.join("\n")}`,
      { hint: "move them away, or pass -o DIR to copy the template into another directory" },
    );
  }

  let written = 0;
  for (const file of files) {
    const target = join(destination, file.target);
    const merge = merged.find((entry) => entry.file === file);
    if (merge !== undefined) {
      if (merge.lines.length > 0) {
        const existing = readFileSync(target, "utf8");
        appendFileSync(target, `${existing === "" || existing.endsWith("\n") ? "" : "\n"}${merge.lines.join("\n")}\n`);
      }
      continue;
    }
    mkdirSync(dirname(target), { recursive: true });
    // COPYFILE_EXCL: a file that appeared since the check is never overwritten.
    copyFileSync(file.source, target, constants.COPYFILE_EXCL);
    if (statSync(target).size !== file.size) {
      throw new KaosError("IO", `${target}: copied ${statSync(target).size} bytes of ${file.size}`, {
        hint: "check the free space, then run it again into an empty directory",
      });
    }
    written += 1;
  }

  const shown = displayPath(destination);
  const lines = [`copied template ${template.name} (${plural(written, "file")}) into ${shown}`];
  for (const { lines: added } of merged) {
    if (added.length > 0) lines.push(`added ${added.join(", ")} to ${join(shown, ".gitignore")}`);
  }
  lines.push(`next: ${destination === process.cwd() ? "" : `cd ${shellWord(shown)} && `}npx kaos up`);
  process.stdout.write(`${lines.join("\n")}\n`);
  return 0;
}
