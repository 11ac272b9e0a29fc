import { describe, it, expect, afterEach } from "vitest";
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Writable } from "node:stream";
import { list } from "tar";
import { packBundle, PACK_MTIME, walkBundle, type BundleFile } from "../src/backends/kubernetes/pack.js";
import { KaosError } from "../src/core/errors.js";

const temps: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "kaos-pack-"));
  temps.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

interface Tree {
  [path: string]: { content: string; mode: number } | { link: string };
}

const TREE: Tree = {
  Dockerfile: { content: "FROM python:3.11-slim\n", mode: 0o644 },
  "model/train": { content: "#!/bin/sh\necho train\n", mode: 0o755 },
  "model/requirements.txt": { content: "numpy\n", mode: 0o644 },
  "model/params.json": { content: '{"C": 1}\n', mode: 0o644 },
  "model/ünïcode.txt": { content: "non-ascii name\n", mode: 0o644 },
  "model/Zeta.txt": { content: "upper-case sorts first\n", mode: 0o644 },
  "model/latest": { link: "params.json" },
};

function writeTree(dir: string, tree: Tree, modes: (path: string, mode: number) => number = (_p, m) => m, mtime?: Date): void {
  for (const [path, spec] of Object.entries(tree)) {
    const target = join(dir, path);
    mkdirSync(dirname(target), { recursive: true });
    if ("link" in spec) {
      symlinkSync(spec.link, target);
    } else {
      writeFileSync(target, spec.content);
      chmodSync(target, modes(path, spec.mode));
      if (mtime) utimesSync(target, mtime, mtime);
    }
  }
}

interface Entry {
  path: string;
  type: string;
  mode: number;
  mtime: number;
  uid: number | undefined;
  gid: number | undefined;
  uname: string | undefined;
  gname: string | undefined;
  linkpath: string | undefined;
}

async function entriesOf(archive: string): Promise<Entry[]> {
  const entries: Entry[] = [];
  await list({
    file: archive,
    onReadEntry: (entry) => {
      entries.push({
        path: entry.path,
        type: entry.type,
        mode: (entry.mode ?? 0) & 0o7777,
        mtime: entry.mtime?.getTime() ?? -1,
        uid: entry.uid,
        gid: entry.gid,
        uname: entry.uname,
        gname: entry.gname,
        linkpath: entry.linkpath,
      });
    },
  });
  return entries;
}

describe("deterministic packing", () => {
  it("packs the same tree in two directories with different mtimes and modes to identical bytes", async () => {
    const first = tempDir();
    const second = tempDir();
    writeTree(first, TREE, undefined, new Date("2021-03-04T05:06:07Z"));
    // Another checkout: another time, a group-writable umask, an owner-only file.
    writeTree(second, TREE, (path, mode) => (path === "model/params.json" ? 0o600 : mode | 0o020), new Date());
    const out = tempDir();
    const a = await packBundle(first, undefined, join(out, "a.tar.gz"));
    const b = await packBundle(second, undefined, join(out, "b.tar.gz"));
    const bytesA = readFileSync(join(out, "a.tar.gz"));
    const bytesB = readFileSync(join(out, "b.tar.gz"));
    expect(bytesA.equals(bytesB)).toBe(true);
    expect(a).toEqual(b);
    expect(a.sha256).toBe(createHash("sha256").update(bytesA).digest("hex"));
    expect(a.size).toBe(bytesA.length);
  });

  it("gives the same bytes when packed again later, after the files were touched", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    const out = tempDir();
    const before = await packBundle(dir, undefined, join(out, "before.tar.gz"));
    const later = new Date(Date.now() + 3_600_000);
    for (const path of ["Dockerfile", "model/train"]) utimesSync(join(dir, path), later, later);
    const after = await packBundle(dir, undefined, join(out, "after.tar.gz"));
    expect(after.sha256).toBe(before.sha256);
  });

  it("changes the bytes when the content changes", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    const out = tempDir();
    const before = await packBundle(dir, undefined, join(out, "1.tar.gz"));
    writeFileSync(join(dir, "model/params.json"), '{"C": 2}\n');
    const after = await packBundle(dir, undefined, join(out, "2.tar.gz"));
    expect(after.sha256).not.toBe(before.sha256);
  });

  it("normalises every entry: sorted paths, fixed mtime, no owner, 0644/0755 modes, symlinks kept", async () => {
    const dir = tempDir();
    writeTree(dir, TREE, (path, mode) => (path === "Dockerfile" ? 0o600 : path === "model/train" ? 0o700 : mode));
    const archive = join(tempDir(), "bundle.tar.gz");
    await packBundle(dir, undefined, archive);
    const entries = await entriesOf(archive);
    const paths = entries.map((entry) => entry.path);
    expect(paths).toEqual([...paths].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
    expect(paths).toEqual([
      "Dockerfile",
      "model/Zeta.txt",
      "model/latest",
      "model/params.json",
      "model/requirements.txt",
      "model/train",
      "model/ünïcode.txt",
    ]);
    for (const entry of entries) {
      expect(entry.mtime).toBe(PACK_MTIME.getTime());
      expect(entry.uid ?? 0).toBe(0);
      expect(entry.gid ?? 0).toBe(0);
      expect(entry.uname ?? "").toBe("");
      expect(entry.gname ?? "").toBe("");
    }
    const byPath = new Map(entries.map((entry) => [entry.path, entry]));
    expect(byPath.get("Dockerfile")?.mode).toBe(0o644);
    expect(byPath.get("model/train")?.mode).toBe(0o755);
    expect(byPath.get("model/latest")?.type).toBe("SymbolicLink");
    expect(byPath.get("model/latest")?.linkpath).toBe("params.json");
  });

  it("writes a gzip header with no time, no file name and an unknown OS", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    const archive = join(tempDir(), "bundle.tar.gz");
    await packBundle(dir, undefined, archive);
    const header = readFileSync(archive).subarray(0, 10);
    expect([header[0], header[1], header[2]]).toEqual([0x1f, 0x8b, 8]);
    expect(header[3]).toBe(0); // no FNAME, FCOMMENT or FEXTRA
    expect(header.readUInt32LE(4)).toBe(0); // MTIME
    expect(header[9]).toBe(0xff); // OS: unknown
  });

  it("packs a listed file set the same whatever order it is listed in, with the listed modes", async () => {
    const dir = tempDir();
    writeTree(dir, TREE, (_path, mode) => mode & ~0o111); // every executable bit lost on disk
    writeFileSync(join(dir, "not-listed.txt"), "left out\n");
    const files: BundleFile[] = [
      { path: "model/train", mode: "exec" },
      { path: "Dockerfile", mode: "file" },
      { path: "model/requirements.txt", mode: "file" },
      { path: "model/latest", mode: "symlink" },
    ];
    const out = tempDir();
    const forward = await packBundle(dir, files, join(out, "forward.tar.gz"));
    const backward = await packBundle(dir, [...files].reverse(), join(out, "backward.tar.gz"));
    expect(readFileSync(join(out, "forward.tar.gz")).equals(readFileSync(join(out, "backward.tar.gz")))).toBe(true);
    expect(forward.sha256).toBe(backward.sha256);
    const entries = await entriesOf(join(out, "forward.tar.gz"));
    expect(entries.map((entry) => entry.path)).toEqual(["Dockerfile", "model/latest", "model/requirements.txt", "model/train"]);
    expect(entries.find((entry) => entry.path === "model/train")?.mode).toBe(0o755);
  });

  it("writes the same bytes to a stream as to a file, and leaves the stream open", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    const file = join(tempDir(), "bundle.tar.gz");
    const toFile = await packBundle(dir, undefined, file);
    const chunks: Buffer[] = [];
    let ended = false;
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(chunk);
        callback();
      },
      final(callback) {
        ended = true;
        callback();
      },
    });
    const toStream = await packBundle(dir, undefined, sink);
    expect(Buffer.concat(chunks).equals(readFileSync(file))).toBe(true);
    expect(toStream).toEqual(toFile);
    expect(ended).toBe(false);
  });

  it("packs a plain tar when asked, still deterministic", async () => {
    const first = tempDir();
    const second = tempDir();
    writeTree(first, TREE);
    writeTree(second, TREE, undefined, new Date("2019-01-01T00:00:00Z"));
    const out = tempDir();
    const a = await packBundle(first, undefined, join(out, "a.tar"), { gzip: false });
    const b = await packBundle(second, undefined, join(out, "b.tar"), { gzip: false });
    expect(a.sha256).toBe(b.sha256);
    expect(readFileSync(join(out, "a.tar")).subarray(257, 262).toString()).toBe("ustar");
  });

  it("walks a bundle without .git, .kaos, node_modules, __pycache__ and editors' swap and lock files, as hashing does", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    for (const skipped of [
      ".git/HEAD",
      ".kaos/state.db",
      "node_modules/x/index.js",
      "model/__pycache__/m.pyc",
      "model/.train.swp",
      ".DS_Store",
    ]) {
      mkdirSync(dirname(join(dir, skipped)), { recursive: true });
      writeFileSync(join(dir, skipped), "skip me");
    }
    const walked = await walkBundle(dir);
    expect(walked.map((file) => file.path).sort()).toEqual(Object.keys(TREE).sort());
    expect(walked.find((file) => file.path === "model/train")?.mode).toBe("exec");
    expect(walked.find((file) => file.path === "model/latest")?.mode).toBe("symlink");
  });

  it("refuses a listed path that escapes the bundle", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    for (const path of ["../etc/passwd", "/etc/passwd", "model/../../x", "./Dockerfile"]) {
      const error = await packBundle(dir, [{ path, mode: "file" }], join(tempDir(), "x.tar.gz")).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(KaosError);
      expect((error as KaosError).code).toBe("BUNDLE_INVALID");
      expect((error as KaosError).message).toContain(path);
    }
  });

  it("fails with IO on a listed file that does not exist and leaves no partial archive", async () => {
    const dir = tempDir();
    writeTree(dir, TREE);
    const out = tempDir();
    const error = await packBundle(dir, [{ path: "model/missing.py", mode: "file" }], join(out, "x.tar.gz")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("IO");
    expect(existsSync(join(out, "x.tar.gz"))).toBe(false);
    expect(readdirSync(out)).toEqual([]);
  });
});
