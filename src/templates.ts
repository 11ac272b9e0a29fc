/**
 * `kaos template list|get`: example projects shipped in the package's
 * `examples/` directory and described by `examples/index.json`.
 */
import { cpSync, existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { KaosError } from "./errors.js";
import { printJson, table } from "./output.js";

interface TemplateEntry {
  name: string;
  description: string;
  path: string;
}

const EXAMPLES_DIR = fileURLToPath(new URL("../examples/", import.meta.url));

function catalogue(): TemplateEntry[] {
  return JSON.parse(readFileSync(join(EXAMPLES_DIR, "index.json"), "utf8")) as TemplateEntry[];
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

export async function templateGetCommand(options: { name: string; out?: string }): Promise<number> {
  const templates = catalogue();
  const template = templates.find((entry) => entry.name === options.name);
  if (!template) {
    throw new KaosError("TEMPLATE_NOT_FOUND", `--name ${options.name}: no such template; expected one of: ${templates.map((t) => t.name).join(", ")}`, {
      hint: "run `kaos template list` to see them",
    });
  }
  const destination = resolve(options.out ?? template.name);
  if (existsSync(destination) && readdirSync(destination).length > 0) {
    throw new KaosError("USAGE", `${destination} already exists and is not empty; expected a new or empty directory`, {
      hint: "pass -o DIR to copy the template elsewhere",
    });
  }
  cpSync(join(EXAMPLES_DIR, template.path), destination, {
    recursive: true,
    filter: (source) => !/[\\/](__pycache__|\.kaos|node_modules)([\\/]|$)/.test(source),
  });
  process.stdout.write(`copied template ${template.name} to ${destination}\nnext: cd ${destination} && kaos up\n`);
  return 0;
}
