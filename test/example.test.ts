import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startServer, type TestServer } from "./helpers/http-server.js";
import { makeProject, REPO_ROOT, runKaos, type Project } from "./helpers/rig.js";
import type { ListedJob } from "./helpers/jobs.js";
import { readMetricSeries } from "../src/core/metrics.js";

const made: Project[] = [];
let server: TestServer | undefined;
afterAll(async () => {
  made.forEach((project) => {
    project.remove();
  });
  await server?.close();
});

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name));
}

/**
 * The one test that installs the example's real requirements (scikit-learn,
 * numpy from PyPI): the template trains its 12-job sweep, then the same
 * pipeline fed by the example's manifest from a local HTTP server.
 */
describe("the mnist example end to end (built CLI, real scikit-learn venv)", () => {
  it("trains the 12-job sweep from data_manifest_micro served on 127.0.0.1, then from the data bundle", { timeout: 900_000 }, async () => {
    const project = makeProject({}, "kaos-mnist-");
    made.push(project);
    const copy = await runKaos(["template", "get", "--name", "mnist", "-o", "mnist"], { cwd: project.dir });
    expect(copy.code, copy.stderr).toBe(0);
    const root = project.path("mnist");

    // The data fetched from a local server first: serve the template's own files and point the manifest at them.
    const features = join(REPO_ROOT, "examples/mnist/data/features");
    const routes = Object.fromEntries(
      filesUnder(features).map((file) => [`/data/features/${relative(features, file)}`, { body: readFileSync(file) }]),
    );
    server = await startServer(routes);
    const manifest = join(root, "data_manifest_micro/manifest.jsonl");
    writeFileSync(manifest, readFileSync(manifest, "utf8").replaceAll("http://127.0.0.1:8765", server.url));
    const config = join(root, "kaos.config.ts");
    const dataConfig = readFileSync(config, "utf8");
    writeFileSync(config, dataConfig.replace(`data: "data/features",`, `manifest: "data_manifest_micro",`));
    const fromManifest = await runKaos(["up"], { cwd: root, timeoutMs: 600_000 });
    expect(fromManifest.code, fromManifest.stderr).toBe(0);
    expect(fromManifest.stderr).toContain("10 downloaded, 0 reused");
    expect(fromManifest.stderr).toContain("12 succeeded, 0 failed, 0 cancelled, 0 reused");
    const gets = () => server!.requests.filter((request) => request.method === "GET").length;
    expect(gets()).toBe(10);
    const again = await runKaos(["up"], { cwd: root });
    expect(again.code).toBe(0);
    expect(again.stderr).toContain("nothing to do");
    expect(gets()).toBe(10);

    // Then the data bundle, as the root kaos.config.ts has it: Build is reused, the sweep trains again.
    writeFileSync(config, dataConfig);
    const up = await runKaos(["up"], { cwd: root, timeoutMs: 600_000 });
    expect(up.code, up.stderr).toBe(0);
    expect(up.stderr).toMatch(/build\s+skipped/);
    expect(up.stderr).toContain("12 succeeded, 0 failed, 0 cancelled, 0 reused");
    const jobs = JSON.parse((await runKaos(["train", "list", "--json"], { cwd: root })).stdout) as ListedJob[];
    const train = jobs.filter((job) => job.stage === "train");
    expect(train).toHaveLength(24);
    const info = await runKaos(["train", "info", train[0]!.id, "-s", "accuracy_validation"], { cwd: root });
    expect(info.code, info.stderr).toBe(0);
    const accuracies = [...info.stdout.slice(info.stdout.indexOf("sweep (12 combinations")).matchAll(/succeeded\s+(0\.\d+)/g)].map((m) =>
      Number(m[1]),
    );
    expect(accuracies).toHaveLength(12);
    expect(Math.min(...accuracies)).toBeGreaterThan(0.9);
    expect([...accuracies].sort((a, b) => b - a)).toEqual(accuracies);

    // Each job appended its learning curve as per-step metrics: growing training sets, the last fit the job's model.
    const series = readMetricSeries(project.path("mnist", ".kaos", "jobs", train[0]!.id, "out"));
    expect(series.skipped).toEqual([]);
    expect(series.series.accuracy_validation?.map((point) => point.step)).toEqual([269, 539, 808, 1078]);
    const detail = JSON.parse((await runKaos(["train", "info", train[0]!.id, "--json"], { cwd: root })).stdout) as {
      metrics: Record<string, number>;
    };
    expect(series.series.accuracy_validation?.at(-1)?.value).toBe(detail.metrics.accuracy_validation);
  });
});
