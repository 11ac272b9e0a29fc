import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync } from "node:fs";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CLI, makeProject, REPO_ROOT, runKaos, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

function tempProject(files = {}): Project {
  const project = makeProject(files, "kaos-template-");
  projects.push(project);
  return project;
}

const TEMPLATE = join(REPO_ROOT, "examples/mnist");

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** What the template copies out: every file of examples/mnist, with `gitignore` under its real name. */
const EXPECTED = filesUnder(TEMPLATE)
  .map((file) => (file === "gitignore" ? ".gitignore" : file))
  .sort();

/**
 * The package as npm installs it, under a node_modules/ directory: its dist/
 * and examples/ are copies (a symlink would be resolved back to the
 * repository), and its dependencies are the repository's.
 */
function installedPackage(project: Project): string {
  const root = project.path("node_modules", "kaos-ml");
  mkdirSync(root, { recursive: true });
  for (const entry of ["dist", "examples", "package.json"]) cpSync(join(REPO_ROOT, entry), join(root, entry), { recursive: true });
  symlinkSync(join(REPO_ROOT, "node_modules"), join(root, "node_modules"));
  return join(root, "dist", "cli.js");
}

describe("kaos template get (built CLI)", () => {
  it("copies every file of the template from a package installed under node_modules/, and says how many", async () => {
    const project = tempProject({ "package.json": "{}\n" });
    const cli = installedPackage(project);
    expect(cli).not.toBe(CLI);
    const result = await runKaos(["template", "get", "--name", "mnist", "-o", "my-project"], { cwd: project.dir, cli });
    expect(result.code, result.stderr).toBe(0);
    expect(filesUnder(project.path("my-project"))).toEqual(EXPECTED);
    expect(result.stdout).toBe(`copied template mnist (${EXPECTED.length} files) into my-project\nnext: cd my-project && npx kaos up\n`);
    expect(statSync(project.path("my-project/model-train/mnist/model/train")).mode & 0o111).not.toBe(0);
  });

  it("copies into a non-empty directory, leaving the files that were there alone", async () => {
    const project = tempProject({
      "package.json": '{ "name": "mine" }\n',
      "node_modules/some-package/index.js": "x\n",
      "notes.txt": "mine\n",
    });
    const result = await runKaos(["template", "get", "--name", "mnist", "-o", "."], { cwd: project.dir });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(`copied template mnist (${EXPECTED.length} files) into .\nnext: npx kaos up\n`);
    expect(readFileSync(project.path("package.json"), "utf8")).toBe('{ "name": "mine" }\n');
    expect(readFileSync(project.path("notes.txt"), "utf8")).toBe("mine\n");
    for (const file of EXPECTED) expect(existsSync(project.path(file)), file).toBe(true);
    expect(readFileSync(project.path(".gitignore"), "utf8")).toMatch(/^\.kaos\/$/m);
  });

  it("refuses to overwrite a file, names every one, and copies nothing", async () => {
    const project = tempProject({ "README.md": "my readme\n", "hyperopt/params.json": "{}\n", "other.txt": "x\n" });
    const result = await runKaos(["template", "get", "--name", "mnist", "-o", "."], { cwd: project.dir });
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(
      "error: copying template mnist into . would overwrite these 2 files; nothing was copied\n  README.md\n  hyperopt/params.json\n",
    );
    expect(filesUnder(project.dir)).toEqual(["README.md", "hyperopt/params.json", "other.txt"]);
    expect(readFileSync(project.path("README.md"), "utf8")).toBe("my readme\n");

    const again = tempProject();
    expect((await runKaos(["template", "get", "--name", "mnist"], { cwd: again.dir })).code).toBe(0);
    const twice = await runKaos(["template", "get", "--name", "mnist"], { cwd: again.dir });
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain(
      `error: copying template mnist into mnist would overwrite these ${EXPECTED.length - 1} files; nothing was copied\n  mnist/README.md\n`,
    );
  });

  it("refuses a file standing where the template has a folder, names it, and copies nothing", async () => {
    const project = tempProject({ stacks: "not a folder\n" });
    const result = await runKaos(["template", "get", "--name", "mnist", "-o", "."], { cwd: project.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("error: copying template mnist into . would overwrite this file; nothing was copied\n  stacks\n");
    expect(filesUnder(project.dir)).toEqual(["stacks"]);
  });

  it("adds .kaos/ to an existing .gitignore instead of refusing it", async () => {
    const project = tempProject({ ".gitignore": "dist/\n.kaos\n*.log" });
    const result = await runKaos(["template", "get", "--name", "mnist", "-o", "."], { cwd: project.dir });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(
      `copied template mnist (${EXPECTED.length - 1} files) into .\nadded __pycache__/, node_modules/ to .gitignore\n`,
    );
    expect(readFileSync(project.path(".gitignore"), "utf8")).toBe("dist/\n.kaos\n*.log\n__pycache__/\nnode_modules/\n");
  });

  it("gives a copy that plans its 12 jobs and renders its cluster stack where it lands", async () => {
    const project = tempProject();
    const copy = await runKaos(["template", "get", "--name", "mnist", "-o", "a b"], { cwd: project.dir });
    expect(copy.code, copy.stderr).toBe(0);
    expect(copy.stdout).toContain("next: cd 'a b' && npx kaos up\n");
    const root = project.path("a b");
    const plan = await runKaos(["plan", "--json"], { cwd: root });
    expect(plan.code, plan.stderr).toBe(0);
    expect((JSON.parse(plan.stdout) as { pipelines: { jobs: unknown[] }[] }).pipelines[0]?.jobs).toHaveLength(12);
    const local = await runKaos(["plan", "--stack", "local", "--json"], { cwd: root });
    expect(local.code, local.stderr).toBe(0);
    const render = await runKaos(["render", "--stack", "cluster", "-o", "out"], { cwd: root });
    expect(render.code, render.stderr).toBe(0);
    expect(readdirSync(join(root, "out/pachyderm")).sort()).toEqual(["svm-build.json", "svm-train.json"]);
  });

  it("has a README that quotes its config and states the numbers of its data and grid", () => {
    const readme = readFileSync(join(TEMPLATE, "README.md"), "utf8");
    expect(readme).toContain(`\`\`\`ts\n${readFileSync(join(TEMPLATE, "kaos.config.ts"), "utf8")}\`\`\``);
    const rows = (split: string) =>
      filesUnder(join(TEMPLATE, "data/features", split)).reduce(
        (sum, file) =>
          sum +
          readFileSync(join(TEMPLATE, "data/features", split, file), "utf8")
            .trim()
            .split("\n").length -
          1,
        0,
      );
    const files = (split: string) => filesUnder(join(TEMPLATE, "data/features", split)).length;
    const count = (n: number) => n.toLocaleString("en-US");
    expect(readme).toContain(`training/xaaa.csv ...       ${count(rows("training"))} rows in ${files("training")} files of up to 200`);
    expect(readme).toContain(`validation/xaaa.csv ...     ${count(rows("validation"))} rows in ${files("validation")} files`);
    expect(readme).toContain(`test/xaaa.csv ...           ${count(rows("test"))} rows in ${files("test")} files`);
    expect(readme).toContain(`(${count(rows("training") + rows("validation") + rows("test"))}\nimages`);
    const manifestEntries = readFileSync(join(TEMPLATE, "data_manifest_micro/manifest.jsonl"), "utf8").trim().split("\n").length;
    expect(readme).toContain(`the same ${manifestEntries} CSVs`);
    const grid = JSON.parse(readFileSync(join(TEMPLATE, "hyperopt/params.json"), "utf8")) as Record<string, unknown[]>;
    expect(readme).toContain(`hyperopt/params.json          ${JSON.stringify(grid).replaceAll(",", ", ").replaceAll(":", ": ")}`);
    const jobs = Object.values(grid).reduce((product, values) => product * values.length, 1);
    expect(readme).toContain(`12-job\nhyperparameter grid`);
    expect(readme).toContain(
      `once for each of the ${jobs}\ncombinations (${grid["degree"]!.length} degrees x ${grid["kernel"]!.length} kernels x ${grid["gamma"]!.length} gammas)`,
    );
    expect(jobs).toBe(12);
    const config = readFileSync(join(TEMPLATE, "kaos.config.ts"), "utf8");
    const memory = /memory: "([^"]+)"/.exec(config)![1]!;
    const cpu = /cpu: (\d+)/.exec(config)![1]!;
    const parallelism = /parallelism: (\d+)/.exec(config)![1]!;
    expect(readme).toContain(`${parallelism} at a time, each with ${cpu} core\nand ${memory} of memory`);
    expect(readFileSync(join(TEMPLATE, "gitignore"), "utf8")).toMatch(/^\.kaos\/$/m);
  });
});
