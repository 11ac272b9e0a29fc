import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeProject, type Project, REPO_ROOT, runKaosOk } from "./helpers/rig.js";

/** A command as `--help` shows it: its subcommands and its options' long names, by their short names too. */
interface HelpedCommand {
  subcommands: string[];
  options: Map<string, string>;
}

/** The entries of one section (`Options:`, `Commands:`) of a help text: the first word of each entry line. */
function sectionEntries(help: string, title: string): string[] {
  const lines = help.split("\n");
  const start = lines.indexOf(`${title}:`);
  if (start === -1) return [];
  const entries: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line.trim() === "") break;
    // An entry starts two spaces in; its wrapped description is indented further.
    if (/^ {2}\S/.test(line)) entries.push(line.trim());
  }
  return entries;
}

function parseHelp(help: string): HelpedCommand {
  const options = new Map<string, string>();
  for (const entry of sectionEntries(help, "Options")) {
    const flags = /^(?:(-\w), )?(--[\w-]+)/.exec(entry);
    if (flags === null) continue;
    const [, short, long] = flags;
    options.set(long!, long!);
    if (short !== undefined) options.set(short, long!);
  }
  const subcommands = sectionEntries(help, "Commands")
    .map((entry) => entry.split(/\s/)[0]!)
    .filter((name) => name !== "help");
  return { subcommands, options };
}

/** The lines of the README's CLI reference block: `kaos ...`, without the indentation. */
function referenceLines(readme: string): string[] {
  const section = readme.split("\n## CLI reference\n")[1]?.split("\n## ")[0];
  if (section === undefined) throw new Error("README.md has no CLI reference section");
  return section
    .split("\n")
    .filter((line) => line.startsWith("    kaos "))
    .map((line) => line.trim());
}

let project: Project;
const commands = new Map<string, HelpedCommand>();

/** Every command reachable from `kaos --help`, by its path (`train info`), as its own `--help` shows it. */
beforeAll(async () => {
  project = makeProject({}, "kaos-cli-reference-");
  const visit = async (path: string[]): Promise<void> => {
    const help = await runKaosOk([...path, "--help"], { cwd: project.dir });
    const command = parseHelp(help.stdout);
    commands.set(path.join(" "), command);
    for (const name of command.subcommands) await visit([...path, name]);
  };
  await visit([]);
}, 120_000);
afterAll(() => project.remove());

describe("the README's CLI reference", () => {
  const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
  const lines = referenceLines(readme);

  /** The command a reference line names (the longest run of subcommand names after `kaos`), and the flags it lists. */
  function described(line: string): { path: string; flags: string[] } {
    const words = line.split(/\s+/).slice(1);
    const path: string[] = [];
    while (words.length > 0 && commands.get(path.join(" "))?.subcommands.includes(words[0]!)) path.push(words.shift()!);
    const flags = [...words.join(" ").matchAll(/(?<![\w-])(--?[a-zA-Z][\w-]*)/g)].map((match) => match[1]!);
    return { path: path.join(" "), flags };
  }

  it("has a line for every command --help lists, and none for a command that does not exist", () => {
    const leaves = [...commands.entries()]
      .filter(([path, command]) => path !== "" && command.subcommands.length === 0)
      .map(([path]) => path);
    const documented = new Set(lines.map((line) => described(line).path));
    expect([...documented].sort()).toEqual([...leaves].sort());
  });

  it("lists exactly the options each command's --help lists", () => {
    const listed = new Map<string, Set<string>>();
    for (const line of lines) {
      const { path, flags } = described(line);
      const command = commands.get(path)!;
      const longNames = listed.get(path) ?? new Set<string>();
      for (const flag of flags) {
        const long = command.options.get(flag);
        expect(long, `README: \`${line}\` lists ${flag}, which \`kaos ${path} --help\` does not`).toBeDefined();
        longNames.add(long!);
      }
      listed.set(path, longNames);
    }
    for (const [path, longNames] of listed) {
      const options = new Set(commands.get(path)!.options.values());
      options.delete("--help");
      expect([...longNames].sort(), `the options of kaos ${path}`).toEqual([...options].sort());
    }
  });

  it("names the global options --help lists", () => {
    const globals = new Set(commands.get("")!.options.values());
    globals.delete("--help");
    expect(globals.size).toBeGreaterThan(0);
    for (const long of globals) expect(readme, `README mentions ${long}`).toContain(long);
  });
});
