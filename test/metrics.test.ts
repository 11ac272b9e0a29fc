import { appendFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { readMetricSeries, readMetrics } from "../src/core/metrics.js";
import { trainingProject, type ListedJob } from "./helpers/jobs.js";
import { makeProject, runKaosOk } from "./helpers/rig.js";

const dirs: string[] = [];
afterEach(() => {
  while (dirs.length > 0) rmSync(dirs.pop()!, { recursive: true, force: true });
});

/** A job's output directory holding `files` under metrics/. */
function outDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "kaos-metrics-"));
  dirs.push(dir);
  mkdirSync(join(dir, "metrics"));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, "metrics", name), text);
  return dir;
}

const lines = (...records: unknown[]) => records.map((record) => `${JSON.stringify(record)}\n`).join("");

describe("per-step metrics (OUT/metrics/*.jsonl)", () => {
  it("gives each field's series, steps as written or else the record's place in its file", () => {
    const dir = outDir({
      "curve.jsonl": lines({ step: 100, loss: 0.9, acc: 0.5 }, { step: 200, loss: 0.4 }, { step: 300, loss: 0.2, acc: 0.8 }),
      "lr.jsonl": lines({ lr: 0.1 }, { lr: 0.05 }),
    });
    expect(readMetricSeries(dir)).toEqual({
      series: {
        loss: [
          { step: 100, value: 0.9 },
          { step: 200, value: 0.4 },
          { step: 300, value: 0.2 },
        ],
        acc: [
          { step: 100, value: 0.5 },
          { step: 300, value: 0.8 },
        ],
        lr: [
          { step: 0, value: 0.1 },
          { step: 1, value: 0.05 },
        ],
      },
      skipped: [],
    });
  });

  it("the last value of each field is the job's metric, unless a metrics/*.json gives it", () => {
    const dir = outDir({
      "curve.jsonl": lines({ step: 1, loss: 0.9, accuracy: 0.5 }, { step: 2, loss: 0.3, accuracy: 0.7 }),
      "final.json": JSON.stringify({ accuracy: 0.75, kernel: "rbf" }),
    });
    expect(readMetrics(dir)).toEqual({ values: { accuracy: 0.75, kernel: "rbf", loss: 0.3 }, skipped: [] });
  });

  it("reads a file while it is appended: a half-written last line waits for the next read", () => {
    const dir = outDir({ "curve.jsonl": `${lines({ step: 1, loss: 0.9 })}{"step": 2, "lo` });
    expect(readMetricSeries(dir)).toEqual({ series: { loss: [{ step: 1, value: 0.9 }] }, skipped: [] });
    expect(readMetrics(dir).values).toEqual({ loss: 0.9 });
    appendFileSync(join(dir, "metrics", "curve.jsonl"), `ss": 0.5}`);
    // Complete but for its newline: a record like any other.
    expect(readMetricSeries(dir).series.loss).toEqual([
      { step: 1, value: 0.9 },
      { step: 2, value: 0.5 },
    ]);
  });

  it("skips a bad line, a bad step or a field that is not a number, naming file:line and why, and reads on", () => {
    const dir = outDir({
      "curve.jsonl": [
        `{"step": 1, "loss": 0.9}`,
        `{"step": 2, "loss": `,
        `[1, 2]`,
        `{"step": 2.5, "loss": 0.7}`,
        `{"step": 3, "loss": 0.5, "phase": "warmup", "__proto__": 1}`,
        "",
        `{"step": 4, "loss": 0.4}`,
        "",
      ].join("\n"),
    });
    const { series, skipped } = readMetricSeries(dir);
    expect(series.loss?.map((point) => point.step)).toEqual([1, 3, 4]);
    expect(Object.hasOwn(series, "__proto__")).toBe(true);
    expect(skipped).toEqual([
      { file: "metrics/curve.jsonl:2", reason: expect.stringMatching(/^not valid JSON \(/) as string },
      { file: "metrics/curve.jsonl:3", reason: `a list; expected an object of numbers such as {"step": 10, "loss": 0.25}` },
      { file: "metrics/curve.jsonl:4", key: "step", reason: "the number 2.5; expected a whole number, 0 or more (the line is skipped)" },
      { file: "metrics/curve.jsonl:5", key: "phase", reason: "a string; expected a number" },
    ]);
    expect(readMetrics(dir)).toEqual({ values: { loss: 0.4, ["__proto__"]: 1 }, skipped });
  });

  it("lists the first ten problems of a file and counts the rest", () => {
    const dir = outDir({ "noisy.jsonl": Array.from({ length: 25 }, (_, i) => `{"step": ${i}, "tag": "x"}\n`).join("") });
    const { skipped } = readMetricSeries(dir);
    expect(skipped).toHaveLength(11);
    expect(skipped[9]).toEqual({ file: "metrics/noisy.jsonl:10", key: "tag", reason: "a string; expected a number" });
    expect(skipped[10]).toEqual({ file: "metrics/noisy.jsonl", reason: "15 more problems not listed" });
  });

  it("never blocks on a FIFO nor reads a link to /dev/zero", () => {
    const dir = outDir({});
    symlinkSync("/dev/zero", join(dir, "metrics", "zero.jsonl"));
    expect(readMetricSeries(dir)).toEqual({ series: {}, skipped: [{ file: "metrics/zero.jsonl", reason: "not a regular file" }] });
  });

  it("with maxPoints, thins a long series to points evenly spread and its last, and says how many there are", () => {
    const dir = outDir({ "curve.jsonl": lines(...Array.from({ length: 1001 }, (_, step) => ({ step, loss: step / 1000 })), { lr: 0.5 }) });
    const { series, totals } = readMetricSeries(dir, { maxPoints: 100 });
    const steps = series.loss!.map((point) => point.step);
    expect(steps.length).toBeLessThanOrEqual(101);
    expect(steps.length).toBeGreaterThanOrEqual(50);
    const gaps = new Set(steps.slice(1, -1).map((step, index) => step - steps[index]!));
    expect(gaps.size).toBe(1);
    expect(steps[0]).toBe(0);
    expect(series.loss!.at(-1)).toEqual({ step: 1000, value: 1 });
    expect(series.lr).toEqual([{ step: 1001, value: 0.5 }]);
    expect(totals).toEqual({ loss: 1001 });
    expect(readMetricSeries(dir).series.loss).toHaveLength(1001);
  });

  it("skips a line longer than a mebibyte, naming it, and reads the lines around it", () => {
    const long = `{"step": 2, "loss": 0.5, "pad": [${"0,".repeat(600_000)}0]}`;
    const dir = outDir({ "curve.jsonl": `${lines({ step: 1, loss: 0.9 })}${long}\n${lines({ step: 3, loss: 0.1 })}` });
    expect(readMetricSeries(dir)).toEqual({
      series: {
        loss: [
          { step: 1, value: 0.9 },
          { step: 3, value: 0.1 },
        ],
      },
      skipped: [{ file: "metrics/curve.jsonl:2", reason: "a line longer than 1048576 bytes; expected one JSON object of numbers a line" }],
    });
  });

  it("gives nothing for a job that wrote no metrics", () => {
    const dir = mkdtempSync(join(tmpdir(), "kaos-metrics-"));
    dirs.push(dir);
    expect(readMetricSeries(dir)).toEqual({ series: {}, skipped: [] });
    expect(readMetrics(dir)).toEqual({ values: {}, skipped: [] });
  });
});

describe("NaN and infinities, as Python's json module writes them", () => {
  // json.dump({"loss": float("nan")}) writes `NaN`, which is not JSON: a diverged run must not lose its other metrics.
  it("skips only the values that are not finite, naming each, and keeps the rest of the file or line", () => {
    const dir = outDir({
      "final.json": '{"acc": 0.5, "loss": NaN, "val": {"loss": -Infinity, "note": "NaN stays a string"}, "gap": Infinity}\n',
      "curve.jsonl": '{"step": 1, "loss": 0.7}\n{"step": 2, "loss": NaN, "acc": 0.6}\n{"step": NaN, "loss": 0.1}\n',
    });
    expect(readMetrics(dir)).toEqual({
      values: { acc: 0.5, "val.note": "NaN stays a string" },
      skipped: [
        { file: "metrics/final.json", key: "loss", reason: "NaN; expected a finite number" },
        { file: "metrics/final.json", key: "val.loss", reason: "-Infinity; expected a finite number" },
        { file: "metrics/final.json", key: "gap", reason: "Infinity; expected a finite number" },
        { file: "metrics/curve.jsonl:2", key: "loss", reason: "NaN; expected a finite number" },
        { file: "metrics/curve.jsonl:3", key: "step", reason: "NaN; expected a whole number, 0 or more (the line is skipped)" },
      ],
    });
    expect(readMetricSeries(dir).series).toEqual({ loss: [{ step: 1, value: 0.7 }], acc: [{ step: 2, value: 0.6 }] });
  });

  it("still skips a file that is not JSON for another reason", () => {
    const dir = outDir({ "final.json": "{acc: NaN}\n" });
    expect(readMetrics(dir).skipped).toEqual([{ file: "metrics/final.json", reason: expect.stringMatching(/^not valid JSON \(/) }]);
  });
});

describe("a per-step file larger than 64 MiB (built CLI)", () => {
  /**
   * A long run's file: `warmup_lr` on the first line only, then 70 MiB of
   * repeated steps written at once, then a last line whose loss depends on the params.
   */
  const TRAIN = `#!/usr/bin/env python3
import json, os, sys
out = sys.argv[1]
score = json.load(open(os.environ["KAOS_PARAMS_FILE"]))["score"]
os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
with open(os.path.join(out, "metrics", "curve.jsonl"), "w") as f:
    f.write('{"step": 0, "loss": 2.5, "warmup_lr": 0.001}\\n')
    line = '{"step": 1, "loss": 0.5, "accuracy": 0.25}\\n'
    f.write(line * (70 * 1024 * 1024 // len(line)))
    f.write(json.dumps({"step": 9999999, "loss": 1 / score, "accuracy": 0.875}) + "\\n")
`;
  const REPEATED = Math.floor((70 * 1024 * 1024) / '{"step": 1, "loss": 0.5, "accuracy": 0.25}\n'.length);

  it("gives each field's last value, one written only early included, to train info, its ranking and train list", async () => {
    const made = makeProject(
      trainingProject({ grid: { score: [2, 4] }, extra: { "src/model/train": { content: TRAIN, mode: 0o755 } } }),
      "kaos-metrics-",
    );
    dirs.push(made.dir);
    await runKaosOk(["up"], { cwd: made.dir });
    const listed = JSON.parse((await runKaosOk(["train", "list", "--json"], { cwd: made.dir })).stdout) as ListedJob[];
    const [best] = listed.filter((job) => job.stage === "train" && job.params.score === 2);

    const info = JSON.parse((await runKaosOk(["train", "info", best!.id, "--json", "-s", "loss", "--asc"], { cwd: made.dir })).stdout) as {
      metrics: Record<string, unknown>;
      metricsSkipped: unknown[];
      series: Record<string, { points: number; lastStep: number }>;
      sweep: { params: { score: number }; metrics: Record<string, unknown> }[];
    };
    expect(info.metrics).toEqual({ loss: 0.5, warmup_lr: 0.001, accuracy: 0.875 });
    expect(info.metricsSkipped).toEqual([]);
    expect(info.series).toEqual({
      loss: { points: REPEATED + 2, lastStep: 9999999 },
      warmup_lr: { points: 1, lastStep: 0 },
      accuracy: { points: REPEATED + 1, lastStep: 9999999 },
    });
    // Ranked by the last loss, lowest first: score 4 ended at 0.25.
    expect(info.sweep.map((row) => [row.params.score, row.metrics.loss])).toEqual([
      [4, 0.25],
      [2, 0.5],
    ]);

    const text = (await runKaosOk(["train", "info", best!.id], { cwd: made.dir })).stdout;
    expect(text).toContain(`  warmup_lr  0.001  (series: last step 0, 1 point)\n`);
    expect(text).toContain(`  loss  0.5  (series: last step 9999999, ${REPEATED + 2} points)\n`);
    expect(text).not.toContain("skipped");

    // The leading metric of the pipeline, per job.
    const list = (await runKaosOk(["train", "list"], { cwd: made.dir })).stdout;
    expect(list).toMatch(/loss/);
    expect(list).toMatch(new RegExp(`${best!.id.slice(0, 8)}.*\\b0\\.5\\b`));
    expect(list).toMatch(/\b0\.25\b/);
  }, 120_000);
});
