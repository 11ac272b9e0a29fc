import { createHash } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import {
  appendFileSync,
  chmodSync,
  closeSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KaosError } from "../src/core/errors.js";
import {
  diffTrees,
  foldersOf,
  hashFile,
  hashString,
  hashTree,
  memoryStatCache,
  startHashWorkers,
  stopHashWorkers,
  treeHashLookup,
  treeLinks,
  type PackedStatCache,
  type StatCacheEntry,
  type StatCacheStore,
  type TreeFile,
} from "../src/core/hash.js";
import { StateStore } from "../src/core/state.js";

const temporaryDirectories: string[] = [];
const stateStores: StateStore[] = [];
// Start the worker threads before any timing-sensitive test runs.
beforeAll(async () => {
  startHashWorkers();
  await hashTree(makeTemporaryDirectory());
});
afterAll(async () => {
  await stopHashWorkers();
  for (const store of stateStores) store.close();
  for (const directory of temporaryDirectories) {
    // Restore permissions a test may have removed so the cleanup can run.
    spawnSync("chmod", ["-R", "u+rwx", directory]);
    rmSync(directory, { recursive: true, force: true });
  }
});

function makeTemporaryDirectory(): string {
  const directory = mkdtempSync(join(tmpdir(), "kaos-hash-"));
  temporaryDirectories.push(directory);
  return directory;
}

type Spec = Record<string, string | { content: string; executable: true } | { symlink: string }>;

/** Writes the files of `spec` under `root`, in the given order. */
function writeTree(root: string, spec: Spec, order: string[] = Object.keys(spec)): void {
  for (const path of order) {
    const value = spec[path]!;
    const target = join(root, path);
    mkdirSync(dirname(target), { recursive: true });
    if (typeof value === "string") writeFileSync(target, value);
    else if ("symlink" in value) symlinkSync(value.symlink, target);
    else {
      writeFileSync(target, value.content);
      chmodSync(target, 0o755);
    }
  }
}

function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function sha256sum(path: string): string {
  return execFileSync("sha256sum", [path], { encoding: "utf8" }).split(" ")[0]!;
}

/** Files written before this wait are out of the racy window (1 s on filesystems with sub-second stamps). */
function waitPastRacyWindow(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 1_100));
}

/**
 * SAMPLE past the racy window, with data/x.csv at a whole-second mtime, which
 * utimes can put back exactly (it takes no nanoseconds) after a same-size edit.
 */
async function sampleWithSettledTarget(): Promise<{ root: string; target: string; editKeepingMtime: () => void }> {
  const root = makeTemporaryDirectory();
  writeTree(root, SAMPLE);
  const target = join(root, "data/x.csv");
  const wholeSecond = new Date("2024-05-01T12:00:00Z");
  utimesSync(target, wholeSecond, wholeSecond);
  await waitPastRacyWindow();
  return {
    root,
    target,
    editKeepingMtime: () => {
      writeFileSync(target, "7,7,7\n");
      utimesSync(target, wholeSecond, wholeSecond);
    },
  };
}

async function expectKaosError(promise: Promise<unknown>, code: string, mentions: string): Promise<KaosError> {
  const error: unknown = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(KaosError);
  const kaosError = error as KaosError;
  expect(kaosError.code).toBe(code);
  expect(kaosError.message).toContain(mentions);
  return kaosError;
}

const SAMPLE: Spec = {
  Dockerfile: "FROM python:3.12\n",
  "model/train": { content: "#!/usr/bin/env python3\nprint('hi')\n", executable: true },
  "model/requirements.txt": "numpy\n",
  "model/a-b.txt": "dash sorts before slash\n",
  "model/a/c.txt": "nested\n",
  "data/x.csv": "1,2,3\n",
  "data/ü-umlaut.txt": "non-ascii name\n",
  "data/😀.txt": "astral name\n",
  "data/\uFB01.txt": "BMP name above U+E000\n",
};

describe("hashTree: identity", () => {
  it("gives the same hash and listing for the same tree in two directories, whatever the creation order and mtimes", async () => {
    const first = makeTemporaryDirectory();
    const second = makeTemporaryDirectory();
    writeTree(first, SAMPLE);
    writeTree(second, SAMPLE, Object.keys(SAMPLE).reverse());
    utimesSync(join(second, "data/x.csv"), new Date("2001-01-01"), new Date("2001-01-01"));
    utimesSync(join(second, "Dockerfile"), new Date("2030-01-01"), new Date("2030-01-01"));
    const [a, b] = await Promise.all([hashTree(first), hashTree(second)]);
    expect(a.hash).toBe(b.hash);
    expect(a.files).toEqual(b.files);
    expect(a.root).toBe(first);
    expect(a.hash).not.toBe(sha256("kaos-tree-v1\n"));
  });

  it("finds a file's hash by path, in a tree still kept as rows and in a listed one", async () => {
    const dir = makeTemporaryDirectory();
    writeTree(dir, SAMPLE);
    const tree = await hashTree(dir);
    const listed = { ...tree, files: [...tree.files] };
    for (const lookup of [treeHashLookup(tree), treeHashLookup(listed)]) {
      // Out of order too: each lookup stands alone.
      for (const file of [...listed.files].reverse()) expect(lookup.get(file.path)).toBe(file.hash);
      expect(lookup.get("model")).toBeUndefined();
      expect(lookup.get("zz-not-there")).toBeUndefined();
    }
  });

  it("follows the documented encoding: sorted by UTF-8 bytes, mode, path and content hash per line", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    const result = await hashTree(root);
    const byteOrder = Object.keys(SAMPLE).sort((left, right) => Buffer.compare(Buffer.from(left), Buffer.from(right)));
    expect(result.files.map((file) => file.path)).toEqual(byteOrder);
    // "a-b.txt" before "a/c.txt" ('-' < '/'), and the astral 😀 after U+FB01 as in UTF-8.
    expect(byteOrder.indexOf("model/a-b.txt")).toBeLessThan(byteOrder.indexOf("model/a/c.txt"));
    expect(byteOrder.indexOf("data/\uFB01.txt")).toBeLessThan(byteOrder.indexOf("data/😀.txt"));
    let encoding = "kaos-tree-v1\n";
    for (const path of byteOrder) {
      const value = SAMPLE[path]!;
      const content = typeof value === "string" ? value : "content" in value ? value.content : value.symlink;
      const mode = typeof value === "string" ? "file" : "content" in value ? "exec" : "symlink";
      const file = result.files.find((entry) => entry.path === path)!;
      expect(file).toEqual({ path, mode, size: Buffer.byteLength(content), hash: sha256(content) });
      encoding += `${mode}\0${path}\0${sha256(content)}\n`;
    }
    expect(result.hash).toBe(sha256(encoding));
    expect(result.stats).toEqual({
      files: byteOrder.length,
      bytes: result.files.reduce((sum, file) => sum + file.size, 0),
      hashedFiles: byteOrder.length,
      hashedBytes: result.files.reduce((sum, file) => sum + file.size, 0),
      cacheHits: 0,
    });
  });

  it("hashes a bundle that is only an empty directory (or only empty directories) deterministically", async () => {
    const empty = makeTemporaryDirectory();
    const emptyDirectories = makeTemporaryDirectory();
    mkdirSync(join(emptyDirectories, "a/b/c"), { recursive: true });
    const [a, b] = await Promise.all([hashTree(empty), hashTree(emptyDirectories)]);
    expect(a.hash).toBe(sha256("kaos-tree-v1\n"));
    expect(b.hash).toBe(a.hash);
    expect(a.files).toEqual([]);
    expect(a.stats).toEqual({ files: 0, bytes: 0, hashedFiles: 0, hashedBytes: 0, cacheHits: 0 });
  });

  it("keeps path order and gives the same result with one worker and with three when the walk is split up", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    // A flat directory and a deep subtree, both far above what one walk unit takes.
    for (let index = 0; index < 3000; index++) writeFileSync(join(root, `many-${index % 7}-${index}.txt`), `${index}`);
    for (let index = 0; index < 3000; index++) {
      const directory = join(root, "deep", `d${index % 3}`, `e${index % 11}`, index % 2 === 0 ? "x" : "x-y");
      mkdirSync(directory, { recursive: true });
      writeFileSync(join(directory, `${index}.txt`), `${index}`);
    }
    const [one, three] = await Promise.all([hashTree(root, { workers: 1 }), hashTree(root, { workers: 3 })]);
    expect(three.hash).toBe(one.hash);
    expect(three.files).toEqual(one.files);
    expect(one.files).toHaveLength(6000 + Object.keys(SAMPLE).length);
    const paths = one.files.map((file) => file.path);
    const byteOrder = [...paths].sort((left, right) => Buffer.compare(Buffer.from(left), Buffer.from(right)));
    expect(paths).toEqual(byteOrder);
    expect(one.files.find((file) => file.path === "deep/d1/e5/x-y/1699.txt")?.hash).toBe(sha256("1699"));
  });

  it("hashes many trees asked for at once, each with its stat cache, without any of them stalling", async () => {
    const roots = Array.from({ length: 8 }, (_, index) => {
      const root = makeTemporaryDirectory();
      writeTree(root, { ...SAMPLE, [`own-${index}.txt`]: `${index}` });
      return root;
    });
    const caches = roots.map(() => memoryStatCache());
    const first = await Promise.all(roots.map((root, index) => hashTree(root, { statCache: caches[index]! })));
    const again = await Promise.all(roots.map((root, index) => hashTree(root, { statCache: caches[index]! })));
    expect(again.map((tree) => tree.hash)).toEqual(first.map((tree) => tree.hash));
    expect(new Set(first.map((tree) => tree.hash)).size).toBe(roots.length);
  });
});

describe("hashTree: the folders a walk listed (foldersOf)", () => {
  /** Each folder's path with the inode and modification time lstat gives it now. */
  function foldersNow(root: string, paths: string[]): { path: string; ino: bigint; mtimeNs: bigint }[] {
    return paths.map((path) => {
      const stat = lstatSync(path === "" ? root : join(root, path), { bigint: true });
      return { path, ino: stat.ino, mtimeNs: stat.mtimeNs };
    });
  }

  it("gives every folder in path order, each with its stat, and says it held exactly the tree's entries; a split walk gives the same", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { "a-b.txt": "1", "a/c.txt": "2", "a/d/e.txt": "3", "b/f.txt": "4" });
    for (let index = 0; index < 3000; index++) writeFileSync(join(root, "a", `many-${index}.txt`), `${index}`);
    for (const workers of [1, 3]) {
      const folders = foldersOf(await hashTree(root, { workers }));
      expect(folders?.exact).toBe(true);
      expect(folders?.paths).toEqual(["", "a", "a/d", "b"]);
      const seen = folders!.paths.map((path, index) => ({
        path,
        ino: BigInt.asUintN(64, folders!.stats[4 * index + 1]!),
        mtimeNs: folders!.stats[4 * index + 2]!,
      }));
      expect(seen).toEqual(foldersNow(root, folders!.paths));
    }
  });

  it.each([
    ["an ignored file", { ".kaosignore": "*.log\n", "run.log": "x" }],
    ["an editor's swap file", { ".value.txt.swp": "x" }],
    ["a folder always skipped", { ".git/HEAD": "x" }],
  ])("says a folder held more than the tree when it held %s", async (_, extra) => {
    const root = makeTemporaryDirectory();
    writeTree(root, { "value.txt": "1", ...extra });
    expect(foldersOf(await hashTree(root))?.exact).toBe(false);
  });

  it("says so of an empty folder too, and gives nothing for a tree the walk did not list", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { "value.txt": "1" });
    expect(foldersOf(await hashTree(root))?.exact).toBe(true);
    mkdirSync(join(root, "empty"));
    expect(foldersOf(await hashTree(root))?.exact).toBe(false);
    expect(
      foldersOf({ root, hash: "0".repeat(64), files: [], stats: { files: 0, bytes: 0, hashedFiles: 0, hashedBytes: 0, cacheHits: 0 } }),
    ).toBeUndefined();
  });
});

describe("hashTree: change detection", () => {
  async function baseline(): Promise<{ root: string; hash: string; files: TreeFile[] }> {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    const result = await hashTree(root);
    return { root, hash: result.hash, files: result.files };
  }

  it("detects a same-size content edit whose mtime was put back", async () => {
    const { root, hash } = await baseline();
    const target = join(root, "data/x.csv");
    const before = statSync(target);
    writeFileSync(target, "9,9,9\n");
    utimesSync(target, before.atime, before.mtime);
    expect(statSync(target).size).toBe(before.size);
    expect(Math.floor(statSync(target).mtimeMs / 1000)).toBe(Math.floor(before.mtimeMs / 1000));
    const after = await hashTree(root);
    expect(after.hash).not.toBe(hash);
  });

  it("detects a rename, a deletion, a new file and a mode change, and diffTrees names each", async () => {
    const { root, hash, files } = await baseline();
    renameSync(join(root, "data/x.csv"), join(root, "data/y.csv"));
    const renamed = await hashTree(root);
    expect(renamed.hash).not.toBe(hash);
    expect(diffTrees(files, renamed.files)).toEqual({
      added: [renamed.files.find((file) => file.path === "data/y.csv")],
      changed: [],
      removed: [files.find((file) => file.path === "data/x.csv")],
      modeChanged: [],
    });

    chmodSync(join(root, "Dockerfile"), 0o755);
    const executable = await hashTree(root);
    expect(executable.hash).not.toBe(renamed.hash);
    const modeDiff = diffTrees(renamed.files, executable.files);
    expect(modeDiff.modeChanged.map((file) => [file.path, file.mode])).toEqual([["Dockerfile", "exec"]]);
    expect(modeDiff.changed).toEqual([]);

    unlinkSync(join(root, "model/a/c.txt"));
    const deleted = await hashTree(root);
    expect(deleted.hash).not.toBe(executable.hash);
    expect(diffTrees(executable.files, deleted.files).removed.map((file) => file.path)).toEqual(["model/a/c.txt"]);

    writeFileSync(join(root, "model/a/new.txt"), "");
    const added = await hashTree(root);
    expect(added.hash).not.toBe(deleted.hash);
    expect(added.files.find((file) => file.path === "model/a/new.txt")).toEqual({
      path: "model/a/new.txt",
      mode: "file",
      size: 0,
      hash: sha256(""),
    });
  });

  it("ignores a new empty directory (directories are not entries, by design)", async () => {
    const { root, hash } = await baseline();
    mkdirSync(join(root, "outputs/empty"), { recursive: true });
    expect((await hashTree(root)).hash).toBe(hash);
    writeFileSync(join(root, "outputs/empty/.keep"), "");
    expect((await hashTree(root)).hash).not.toBe(hash);
  });
});

describe("hashTree: ignore rules", () => {
  /** Hashes `kept`, adds `leftOut` beside it, and checks that the tree's files and hash did not change. */
  async function expectLeftOut(root: string, kept: Spec, leftOut: Spec): Promise<void> {
    writeTree(root, kept);
    const before = await hashTree(root);
    writeTree(root, leftOut);
    const after = await hashTree(root);
    expect(after.files.map((file) => file.path)).toEqual(Object.keys(kept).sort());
    expect(after.hash).toBe(before.hash);
  }

  it("always skips .git, .kaos, node_modules and __pycache__ at any depth", async () => {
    await expectLeftOut(
      makeTemporaryDirectory(),
      { "keep.txt": "kept", "sub/keep.txt": "kept" },
      {
        ".git/HEAD": "ref",
        ".kaos/state.db": "db",
        "node_modules/x/index.js": "x",
        "sub/__pycache__/m.pyc": "pyc",
        "sub/node_modules/y.js": "y",
        "sub/deeper/.git": "gitdir: elsewhere",
      },
    );
  });

  it("leaves out editors' swap, lock and autosave files and folder metadata, but keeps backups and .tmp files", async () => {
    const root = makeTemporaryDirectory();
    await expectLeftOut(
      root,
      { "sub/data.csv": "1\n", "train.py": "print(1)\n" },
      {
        ".train.py.swp": "vim",
        "sub/.data.csv.swo": "vim",
        "#train.py#": "emacs autosave",
        ".DS_Store": "finder",
        "sub/data.csv.kate-swp": "kate",
        ".~lock.data.csv#": "libreoffice",
        ".goutputstream-X1Y2Z3": "gnome",
        "train.py___jb_tmp___": "jetbrains",
        "sub/data.csv.crswap": "chrome",
        ".#train.py": { symlink: "user@host.1234:1700000000" },
      },
    );

    writeTree(root, { "train.py~": "backup", "sub/data.tmp": "kept", swp: "a name, not a swap file", "notes.swp": "kept" });
    expect((await hashTree(root)).files.map((file) => file.path)).toEqual([
      "notes.swp",
      "sub/data.csv",
      "sub/data.tmp",
      "swp",
      "train.py",
      "train.py~",
    ]);
  });

  it("applies .kaosignore (with negation), keeps .kaosignore itself in the tree, and takes extra patterns", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, {
      ".kaosignore": "*.log\n!keep.log\nscratch/\n/top-only.txt\n",
      "run.log": "noise",
      "keep.log": "kept on purpose",
      "sub/run.log": "noise",
      "scratch/a.txt": "a",
      "sub/scratch/b.txt": "b",
      "top-only.txt": "ignored at the root",
      "sub/top-only.txt": "kept below the root",
      "extra.tmp": "ignored by an option",
      "data.csv": "1",
    });
    const result = await hashTree(root, { ignore: ["*.tmp"] });
    expect(result.files.map((file) => file.path)).toEqual([".kaosignore", "data.csv", "keep.log", "sub/top-only.txt"]);

    // Editing an ignored file changes nothing; editing .kaosignore does.
    writeFileSync(join(root, "run.log"), "more noise");
    expect((await hashTree(root, { ignore: ["*.tmp"] })).hash).toBe(result.hash);
    appendFileSync(join(root, ".kaosignore"), "data.csv\n");
    const edited = await hashTree(root, { ignore: ["*.tmp"] });
    expect(edited.files.map((file) => file.path)).toEqual([".kaosignore", "keep.log", "sub/top-only.txt"]);
  });

  it("skips a special file that .kaosignore excludes instead of failing on it", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { ".kaosignore": "*.fifo\n", "a.txt": "a" });
    execFileSync("mkfifo", [join(root, "pipe.fifo")]);
    const result = await hashTree(root);
    expect(result.files.map((file) => file.path)).toEqual([".kaosignore", "a.txt"]);
  });

  it("with everyFile, ignores nothing (default names, editor files, .kaosignore) and leaves sockets and FIFOs out", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, {
      ".kaosignore": "*.log\n",
      "run.log": "kept",
      ".git/HEAD": "ref",
      "sub/__pycache__/m.pyc": "pyc",
      "node_modules/x.js": "x",
      ".model.swp": "swap",
      link: { symlink: "run.log" },
    });
    execFileSync("mkfifo", [join(root, "pipe")]);
    const result = await hashTree(root, { everyFile: true });
    expect(result.files.map((file) => file.path)).toEqual([
      ".git/HEAD",
      ".kaosignore",
      ".model.swp",
      "link",
      "node_modules/x.js",
      "run.log",
      "sub/__pycache__/m.pyc",
    ]);
    writeFileSync(join(root, "sub/__pycache__/m.pyc"), "changed");
    expect((await hashTree(root, { everyFile: true })).hash).not.toBe(result.hash);
  });
});

describe("hashTree: symlinks", () => {
  it("hashes a link as its target string, never following it out of the bundle", async () => {
    const outside = makeTemporaryDirectory();
    writeTree(outside, { "secret.txt": "outside content", "dir/inner.txt": "inner" });
    const root = makeTemporaryDirectory();
    writeTree(root, {
      "to-file": { symlink: join(outside, "secret.txt") },
      "to-dir": { symlink: join(outside, "dir") },
      dangling: { symlink: "does/not/exist" },
    });
    const first = await hashTree(root);
    expect(first.files).toEqual([
      { path: "dangling", mode: "symlink", size: "does/not/exist".length, hash: sha256("does/not/exist") },
      { path: "to-dir", mode: "symlink", size: Buffer.byteLength(join(outside, "dir")), hash: sha256(join(outside, "dir")) },
      { path: "to-file", mode: "symlink", size: Buffer.byteLength(join(outside, "secret.txt")), hash: sha256(join(outside, "secret.txt")) },
    ]);

    writeFileSync(join(outside, "secret.txt"), "changed outside");
    writeFileSync(join(outside, "dir/inner.txt"), "changed too");
    expect((await hashTree(root)).hash).toBe(first.hash);

    unlinkSync(join(root, "dangling"));
    symlinkSync("does/not/exist-either", join(root, "dangling"));
    expect((await hashTree(root)).hash).not.toBe(first.hash);
  });
});

describe("hashTree: stat cache", () => {
  it("reads nothing on a second run, saves nothing, and re-reads exactly one touched file", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    const cache = memoryStatCache();

    const cold = await hashTree(root, { statCache: cache });
    expect(cold.stats.hashedFiles).toBe(Object.keys(SAMPLE).length);
    expect(cold.stats.cacheHits).toBe(0);
    expect(cache.saveCount).toBe(1);

    const warm = await hashTree(root, { statCache: cache });
    expect(warm.stats).toMatchObject({ hashedFiles: 0, hashedBytes: 0, cacheHits: Object.keys(SAMPLE).length });
    expect(warm.hash).toBe(cold.hash);
    expect(warm.files).toEqual(cold.files);
    expect(cache.saveCount).toBe(1);

    const touched = join(root, "model/requirements.txt");
    const now = new Date();
    utimesSync(touched, now, now);
    const afterTouch = await hashTree(root, { statCache: cache });
    expect(afterTouch.stats).toMatchObject({
      hashedFiles: 1,
      hashedBytes: statSync(touched).size,
      cacheHits: Object.keys(SAMPLE).length - 1,
    });
    expect(afterTouch.hash).toBe(cold.hash);
    expect(cache.saveCount).toBe(2);

    unlinkSync(join(root, "data/x.csv"));
    const afterDelete = await hashTree(root, { statCache: cache });
    expect(afterDelete.stats.hashedFiles).toBe(1); // the touched file is still within the racy window
    expect(afterDelete.hash).not.toBe(cold.hash);
    expect(cache.saveCount).toBe(3);
    expect([...(await cache.load(root)).keys()]).not.toContain("data/x.csv");
  });

  it("catches a same-size edit with the mtime put back: utimes moves ctime, which the cache compares", async () => {
    const { root, target, editKeepingMtime } = await sampleWithSettledTarget();
    const cache = memoryStatCache();
    const cold = await hashTree(root, { statCache: cache });
    const before = statSync(target, { bigint: true });
    // Same size, same mtime to the nanosecond: only ctime, which no user call
    // can set and which utimes itself moves, betrays the edit.
    editKeepingMtime();
    const after = statSync(target, { bigint: true });
    expect(after.size).toBe(before.size);
    expect(after.mtimeNs).toBe(before.mtimeNs);
    expect(after.ctimeNs).not.toBe(before.ctimeNs);
    const edited = await hashTree(root, { statCache: cache });
    expect(edited.stats.hashedFiles).toBe(1);
    expect(edited.hash).not.toBe(cold.hash);
    expect(edited.files.find((file) => file.path === "data/x.csv")!.hash).toBe(sha256("7,7,7\n"));
  });

  it("re-reads a file written right before the cache was saved (racy rule), and trusts it once it has aged", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    writeFileSync(join(root, "fresh.txt"), "written within the same tick as the cache");
    const cache = memoryStatCache();
    await hashTree(root, { statCache: cache });
    // Nothing changed, yet fresh.txt is read again: its mtime is within the
    // racy window of the cache's save time, so an edit made right after the
    // first read in the same timestamp tick would have left the same stat.
    const again = await hashTree(root, { statCache: cache });
    expect(again.stats).toMatchObject({ hashedFiles: 1, cacheHits: Object.keys(SAMPLE).length });
    expect(cache.saveCount).toBe(2); // saved, so the window moves on
    await waitPastRacyWindow();
    // Its last read may still have been within the window (then it is read
    // once more, and that save is far enough past its stamps); after that
    // the entry is trusted.
    const aged = await hashTree(root, { statCache: cache });
    expect(aged.stats.hashedFiles).toBeLessThanOrEqual(1);
    const settled = await hashTree(root, { statCache: cache });
    expect(settled.stats).toMatchObject({ hashedFiles: 0, cacheHits: Object.keys(SAMPLE).length + 1 });
  });

  it("finds entries whatever order the store returns them in", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    const cache = memoryStatCache();
    const cold = await hashTree(root, { statCache: cache });
    const reversed = new Map([...(await cache.load(root)).entries()].reverse());
    const store: StatCacheStore = { load: () => reversed, save: () => undefined, savedAt: () => cache.savedAt(root) };
    const warm = await hashTree(root, { statCache: store });
    expect(warm.stats).toMatchObject({ hashedFiles: 0, cacheHits: Object.keys(SAMPLE).length });
    expect(warm.hash).toBe(cold.hash);
  });

  it("only asks get() of a Map subclass, so a store can keep its entries lazily", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    const cache = memoryStatCache();
    const cold = await hashTree(root, { statCache: cache });
    class LookupOnly extends Map<string, StatCacheEntry> {
      lookups = 0;
      override get(path: string): StatCacheEntry | undefined {
        this.lookups++;
        return super.get(path);
      }
      override keys(): MapIterator<string> {
        throw new Error("iterated");
      }
      override values(): MapIterator<StatCacheEntry> {
        throw new Error("iterated");
      }
      override entries(): MapIterator<[string, StatCacheEntry]> {
        throw new Error("iterated");
      }
    }
    const lazy = new LookupOnly();
    for (const entry of (await cache.load(root)).values()) Map.prototype.set.call(lazy, entry.path, entry);
    const store: StatCacheStore = { load: () => lazy, save: () => undefined, savedAt: () => cache.savedAt(root) };
    const warm = await hashTree(root, { statCache: store });
    expect(warm.stats).toMatchObject({ hashedFiles: 0, cacheHits: Object.keys(SAMPLE).length });
    expect(warm.hash).toBe(cold.hash);
    expect(lazy.lookups).toBe(Object.keys(SAMPLE).length);
  });

  it("re-reads thousands of changed files, and only those, through hash jobs", async () => {
    const root = makeTemporaryDirectory();
    for (let index = 0; index < 4000; index++) writeTree(root, { [`d${index % 5}/f${index}.txt`]: `v1 ${index}` });
    await waitPastRacyWindow();
    const cache = memoryStatCache();
    await hashTree(root, { statCache: cache });
    for (let index = 0; index < 4000; index += 2) writeFileSync(join(root, `d${index % 5}/f${index}.txt`), `v2 ${index}`);
    const edited = await hashTree(root, { statCache: cache });
    expect(edited.stats).toMatchObject({ files: 4000, hashedFiles: 2000, cacheHits: 2000 });
    expect(edited.files.find((file) => file.path === "d2/f2.txt")?.hash).toBe(sha256("v2 2"));
    expect(edited.files.find((file) => file.path === "d1/f1.txt")?.hash).toBe(sha256("v1 1"));
    expect(edited.hash).toBe((await hashTree(root)).hash);
  });

  it("trusts no entry from a store that cannot tell when it was saved", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    const saved = new Map<string, StatCacheEntry>();
    const store: StatCacheStore = {
      load: async () => saved,
      save: async (_root, entries) => {
        saved.clear();
        for (const entry of entries) saved.set(entry.path, entry);
      },
    };
    await hashTree(root, { statCache: store });
    expect(saved.size).toBe(Object.keys(SAMPLE).length);
    const again = await hashTree(root, { statCache: store });
    expect(again.stats).toMatchObject({ hashedFiles: Object.keys(SAMPLE).length, cacheHits: 0 });
  });

  it("reads dev and ino back from a store that kept them as signed or plain numbers", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    const cache = memoryStatCache();
    const cold = await hashTree(root, { statCache: cache });
    const entries = [...(await cache.load(root)).values()].map((entry) => ({
      ...entry,
      dev: Number(entry.dev),
      ino: BigInt.asIntN(64, BigInt(entry.ino)),
    }));
    const reloaded = memoryStatCache();
    reloaded.save(root, entries, cache.savedAt(root)!);
    const warm = await hashTree(root, { statCache: reloaded });
    expect(warm.stats.cacheHits).toBe(Object.keys(SAMPLE).length);
    expect(warm.hash).toBe(cold.hash);
  });
});

/** A real SQLite stat cache (the one kaos uses), counting the packed loads and saves. */
function sqliteStatCache(): StatCacheStore & { packedLoads: (PackedStatCache | undefined)[]; saves: number } {
  const store = StateStore.open(makeTemporaryDirectory());
  stateStores.push(store);
  const inner = store.statCache();
  const counted = {
    packedLoads: [] as (PackedStatCache | undefined)[],
    saves: 0,
    load: inner.load,
    savedAt: inner.savedAt,
    loadPacked(root: string) {
      const packed = inner.loadPacked!(root);
      counted.packedLoads.push(packed);
      return packed;
    },
    save(root: string, entries: StatCacheEntry[], cacheTimeNs: bigint, treeHash?: string) {
      counted.saves++;
      return inner.save(root, entries, cacheTimeNs, treeHash);
    },
  };
  return counted;
}

describe("hashTree: a stat cache the hashing threads compare against", () => {
  it("finds an unchanged tree without reading or saving, lists it on demand, and finds edits, additions and removals", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { ...SAMPLE, "model/link": { symlink: "a/c.txt" } });
    await waitPastRacyWindow();
    const cache = sqliteStatCache();
    const cold = await hashTree(root, { statCache: cache });
    expect(cache.packedLoads).toEqual([undefined]);
    expect(cache.saves).toBe(1);
    const count = Object.keys(SAMPLE).length + 1;

    const warm = await hashTree(root, { statCache: cache });
    // Non-ASCII names included: the cache is in the walk's byte order, so the threads compare.
    expect(cache.packedLoads[1]?.count).toBe(count);
    expect(cache.packedLoads[1]?.treeHash).toBe(cold.hash);
    expect(warm.stats).toEqual({ ...cold.stats, hashedFiles: 0, hashedBytes: 0, cacheHits: count });
    expect(warm.hash).toBe(cold.hash);
    expect(cache.saves).toBe(1);
    expect(treeLinks(warm).files).toEqual(cold.files.filter((file) => file.mode === "symlink"));
    expect(warm.files).toEqual(cold.files);

    writeFileSync(join(root, "data/x.csv"), "4,5,6\n");
    rmSync(join(root, "model/train"));
    writeFileSync(join(root, "model/zz-new.txt"), "added last in path order\n");
    const edited = await hashTree(root, { statCache: cache });
    const uncached = await hashTree(root);
    expect(edited.hash).toBe(uncached.hash);
    expect(edited.files).toEqual(uncached.files);
    expect(edited.stats).toMatchObject({ files: count, hashedFiles: 2, cacheHits: count - 2 });
    expect(cache.saves).toBe(2);

    // Once the edits have aged past the racy window (read once more, then trusted),
    // remove the last file in path order and nothing else: every walked file is a hit, yet the tree changed.
    await waitPastRacyWindow();
    await hashTree(root, { statCache: cache });
    rmSync(join(root, "model/zz-new.txt"));
    const shorter = await hashTree(root, { statCache: cache });
    expect(shorter.hash).toBe((await hashTree(root)).hash);
    expect(shorter.stats).toMatchObject({ files: count - 1, hashedFiles: 0, cacheHits: count - 1 });
  });

  it("applies the racy rule and compares ctime in the threads too", async () => {
    const { root, editKeepingMtime } = await sampleWithSettledTarget();
    writeFileSync(join(root, "fresh.txt"), "written within the same tick as the cache");
    const cache = sqliteStatCache();
    const cold = await hashTree(root, { statCache: cache });
    const again = await hashTree(root, { statCache: cache });
    expect(cache.packedLoads[1]).toBeDefined();
    expect(again.stats).toMatchObject({ hashedFiles: 1, cacheHits: Object.keys(SAMPLE).length });
    expect(again.hash).toBe(cold.hash);

    editKeepingMtime();
    const edited = await hashTree(root, { statCache: cache });
    expect(edited.files.find((file) => file.path === "data/x.csv")!.hash).toBe(sha256("7,7,7\n"));
    expect(edited.hash).toBe((await hashTree(root)).hash);
  });

  it("walks a tree the cache knows to be small in the calling thread when no thread runs, with the same results", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { ...SAMPLE, "model/link": { symlink: "a/c.txt" } });
    await waitPastRacyWindow();
    const cache = sqliteStatCache();
    const cold = await hashTree(root, { statCache: cache });
    await stopHashWorkers();
    const warm = await hashTree(root, { statCache: cache });
    expect(warm.hash).toBe(cold.hash);
    expect(warm.stats.cacheHits).toBe(Object.keys(SAMPLE).length + 1);

    await stopHashWorkers();
    writeFileSync(join(root, "model/a/c.txt"), "edited\n");
    writeFileSync(join(root, "data/new.csv"), "9\n");
    const edited = await hashTree(root, { statCache: cache });
    expect(edited.stats).toMatchObject({ hashedFiles: 2, cacheHits: Object.keys(SAMPLE).length });
    const uncached = await hashTree(root);
    expect(edited.hash).toBe(uncached.hash);
    expect(edited.files).toEqual(uncached.files);

    await stopHashWorkers();
    execFileSync("mkfifo", [join(root, "data/pipe")]);
    await expectKaosError(hashTree(root, { statCache: cache }), "BUNDLE_INVALID", "data/pipe");
  });

  it("walks a big tree in the calling thread too while the threads start, with one thread's answer, racy files included", async () => {
    const root = makeTemporaryDirectory();
    // More files than a tree walked without threads.
    const spec: Spec = {};
    for (let i = 0; i < 3000; i++) spec[`d${i % 40}/f${i}.txt`] = `${i}\n`;
    writeTree(root, spec);
    await waitPastRacyWindow();
    const cache = sqliteStatCache();
    const cold = await hashTree(root, { statCache: cache, workers: 1 });
    await stopHashWorkers();
    const warm = await hashTree(root, { statCache: cache });
    expect(warm.hash).toBe(cold.hash);
    expect(warm.stats).toMatchObject({ files: 3000, hashedFiles: 0, cacheHits: 3000 });

    // Edits, and files written within the racy window of the next save, in every part of the tree.
    for (let i = 0; i < 3000; i += 150) writeFileSync(join(root, `d${i % 40}/f${i}.txt`), `edited ${i}\n`);
    writeFileSync(join(root, "d0/new.txt"), "new\n");
    writeFileSync(join(root, "d39/new.txt"), "new\n");
    await stopHashWorkers();
    const edited = await hashTree(root, { statCache: cache });
    const oneThread = await hashTree(root, { workers: 1 });
    expect(edited.hash).toBe(oneThread.hash);
    expect(edited.files).toEqual(oneThread.files);
    expect(edited.stats).toMatchObject({ files: 3002, hashedFiles: 22, cacheHits: 2980 });
    // Saved right after they were written, they are read again by the next walk, and give the same tree.
    await stopHashWorkers();
    const racy = await hashTree(root, { statCache: cache });
    expect(racy.hash).toBe(oneThread.hash);
    expect(racy.stats.hashedFiles).toBe(22);
  });

  it("learns the tree hash from an unchanged tree when the saved cache lacks it", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, SAMPLE);
    await waitPastRacyWindow();
    const memory = memoryStatCache();
    const cold = await hashTree(root, { statCache: memory });
    const cache = sqliteStatCache();
    cache.save(root, [...(await memory.load(root)).values()], memory.savedAt(root)!);
    const warm = await hashTree(root, { statCache: cache });
    expect(cache.packedLoads[0]?.treeHash).toBeUndefined();
    expect(warm.hash).toBe(cold.hash);
    expect(warm.stats.hashedFiles).toBe(0);
    await hashTree(root, { statCache: cache });
    expect(cache.packedLoads[1]?.treeHash).toBe(cold.hash);
  });
});

describe("hashTree: large files", () => {
  it("hashes a 300 MB file and several medium ones like sha256sum, in bounded memory", async () => {
    const root = makeTemporaryDirectory();
    const chunk = Buffer.alloc(4 << 20);
    for (let index = 0; index < chunk.length; index += 4) chunk.writeUInt32LE((index * 2654435761) >>> 0, index);
    const big = join(root, "big.bin");
    const fd = openSync(big, "w");
    for (let written = 0; written < 300 << 20; written += chunk.length) {
      chunk.writeUInt32LE(written, 0);
      writeSync(fd, chunk);
    }
    closeSync(fd);
    // Two more files above the large-file threshold and a dozen that together
    // exceed one batch's byte budget, so every scheduling path is taken.
    writeFileSync(join(root, "second-big.bin"), Buffer.concat([chunk, chunk, chunk]));
    writeFileSync(join(root, "third-big.bin"), Buffer.concat([chunk, chunk, chunk, Buffer.from("x")]));
    for (let index = 0; index < 12; index++) writeFileSync(join(root, `medium-${index}.bin`), chunk.subarray(index, 3 << 20));

    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    }, 5);
    const result = await hashTree(root);
    clearInterval(sampler);
    rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    expect(rssPeak - rssBefore).toBeLessThan(64 << 20);

    const names = result.files.map((file) => file.path);
    expect(names).toHaveLength(15);
    for (const file of result.files) expect(file.hash, file.path).toBe(sha256sum(join(root, file.path)));
    expect(result.files.find((file) => file.path === "big.bin")!.size).toBe(300 << 20);
    expect(await hashFile(big)).toBe(result.files.find((file) => file.path === "big.bin")!.hash);
  });
});

describe("hashTree: errors", () => {
  it("rejects a root that does not exist or is not a directory, naming it", async () => {
    const parent = makeTemporaryDirectory();
    const missing = join(parent, "nope");
    await expectKaosError(hashTree(missing), "BUNDLE_INVALID", missing);
    const file = join(parent, "file.txt");
    writeFileSync(file, "x");
    await expectKaosError(hashTree(file), "BUNDLE_INVALID", file);
  });

  it("rejects a FIFO inside the bundle as BUNDLE_INVALID naming it (special-file error path, no hang)", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { "a.txt": "a", "sub/b.txt": "b" });
    execFileSync("mkfifo", [join(root, "sub/pipe")]);
    const error = await expectKaosError(hashTree(root), "BUNDLE_INVALID", '"sub/pipe"');
    expect(error.hint).toContain(".kaosignore");
  });

  it("rejects a file name that is not valid UTF-8 instead of leaving the file out", async () => {
    const root = makeTemporaryDirectory();
    writeTree(root, { "a.txt": "a", "sub/b.txt": "b" });
    writeFileSync(Buffer.concat([Buffer.from(`${root}/sub/`), Buffer.from([0x66, 0xff, 0x2e, 0x74])]), "latin-1 name");
    writeFileSync(join(root, "sub/ok-\uFFFD.txt"), "a real U+FFFD in a valid name");
    const error = await expectKaosError(hashTree(root), "BUNDLE_INVALID", "not valid UTF-8");
    expect(error.message).toContain('"sub/f\uFFFD.t"');
    unlinkSync(Buffer.concat([Buffer.from(`${root}/sub/`), Buffer.from([0x66, 0xff, 0x2e, 0x74])]));
    const result = await hashTree(root);
    expect(result.files.map((file) => file.path)).toEqual(["a.txt", "sub/b.txt", "sub/ok-\uFFFD.txt"]);
  });

  it("reports an unreadable file as an IO error naming it (run as an unprivileged user when the suite runs as root)", async () => {
    const root = makeTemporaryDirectory();
    chmodSync(root, 0o755);
    writeTree(root, { "ok.txt": "fine", "locked/secret.txt": "no" });
    chmodSync(join(root, "locked/secret.txt"), 0o000);
    const isRoot = process.getuid?.() === 0;
    if (!isRoot) {
      await expectKaosError(hashTree(root), "IO", '"locked/secret.txt"');
      return;
    }
    // Root reads mode-000 files, so the same call runs in a child process as
    // "nobody", for whom the file really is unreadable.
    const source = fileURLToPath(new URL("../src/core/hash.ts", import.meta.url));
    const jiti = fileURLToPath(new URL("../node_modules/jiti/lib/jiti-register.mjs", import.meta.url));
    const script = `
      const loaded = await import(${JSON.stringify(source)});
      const { hashTree } = loaded.default ?? loaded;
      try { await hashTree(${JSON.stringify(root)}); console.log(JSON.stringify({ ok: true })); }
      catch (error) { console.log(JSON.stringify({ code: error.code, message: error.message })); }`;
    const child = spawnSync(process.execPath, ["--import", jiti, "--input-type=module", "-e", script], {
      uid: 65534,
      gid: 65534,
      encoding: "utf8",
      env: { ...process.env, JITI_FS_CACHE: "false", HOME: "/tmp" },
      timeout: 60_000,
    });
    expect(child.stderr, child.stdout).not.toMatch(/Error/);
    expect(child.stdout, child.stderr).toContain("{");
    const outcome = JSON.parse(child.stdout.trim().split("\n").pop()!) as { code?: string; message?: string };
    expect(outcome.code, child.stdout).toBe("IO");
    expect(outcome.message).toContain('"locked/secret.txt"');
    expect(outcome.message).toContain("permission denied");
  });
});

describe("hashFile", () => {
  it("equals sha256sum, for an empty file too", async () => {
    const root = makeTemporaryDirectory();
    const file = join(root, "f.bin");
    writeFileSync(file, Buffer.alloc(3 << 20, 7));
    expect(await hashFile(file)).toBe(sha256sum(file));
    writeFileSync(join(root, "empty"), "");
    expect(await hashFile(join(root, "empty"))).toBe(sha256sum(join(root, "empty")));
  });

  it("fails with IO naming a missing file, and refuses a FIFO instead of hanging", async () => {
    const root = makeTemporaryDirectory();
    await expectKaosError(hashFile(join(root, "missing")), "IO", join(root, "missing"));
    execFileSync("mkfifo", [join(root, "pipe")]);
    await expectKaosError(hashFile(join(root, "pipe")), "IO", "not a regular file");
  });
});

describe("hashString", () => {
  it("length-prefixes each part so that part boundaries count", () => {
    expect(hashString("ab", "c")).not.toBe(hashString("a", "bc"));
    expect(hashString("a", "")).not.toBe(hashString("a"));
    expect(hashString("ü", "x")).toBe(sha256("2:ü1:x"));
    expect(hashString()).toBe(sha256(""));
  });
});

describe("diffTrees", () => {
  const file = (path: string, hash: string, mode: TreeFile["mode"] = "file"): TreeFile => ({ path, mode, size: 1, hash });

  it("sorts every difference into added, changed, removed and modeChanged", () => {
    const before = [file("a", "1"), file("b", "2"), file("c", "3"), file("d", "4")];
    const after = [file("a", "1"), file("b", "20"), file("c", "3", "exec"), file("e", "5"), file("f", "6", "symlink")];
    expect(diffTrees(before, after)).toEqual({
      added: [file("e", "5"), file("f", "6", "symlink")],
      changed: [file("b", "20")],
      removed: [file("d", "4")],
      modeChanged: [file("c", "3", "exec")],
    });
  });

  it("treats a missing before as everything added, and equal lists as no change", () => {
    const after = [file("a", "1")];
    expect(diffTrees(undefined, after)).toEqual({ added: after, changed: [], removed: [], modeChanged: [] });
    expect(diffTrees(after, after)).toEqual({ added: [], changed: [], removed: [], modeChanged: [] });
  });
});
