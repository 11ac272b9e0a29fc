/**
 * The seal of a bundle's own folder, to be mounted for its jobs
 * (`sealBundleFolder`): checked against what the plan hashed before any job
 * sees it, through its real path, and refused where a bind mount would not
 * show the folder as the tree has it.
 */
import { execFileSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { SweepComparison, holdsHash, sealBundleFolder } from "../src/backends/local/data-view.js";
import { foldersOf, hashTree, memoryStatCache, treeHashLookup, type TreeHash } from "../src/core/hash.js";
import { checkSealEveryStat, releaseSeal } from "../src/core/snapshot.js";
import { StatCacheMap } from "../src/core/stat-cache.js";

let dir: string;
let bundle: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kaos-mount-seal-"));
  bundle = join(dir, "data");
  mkdirSync(join(bundle, "sub"), { recursive: true });
  writeFileSync(join(bundle, "value.txt"), "v1");
  writeFileSync(join(bundle, "sub", "more.txt"), "more");
  writeFileSync(join(bundle, "v1.txt"), "one");
  writeFileSync(join(bundle, "v2.txt"), "two");
  symlinkSync("v1.txt", join(bundle, "current"));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * The tree a plan hashes now, and its stat cache, as if walked and saved a
 * minute after every file's and folder's change (so each is vouched for, and
 * the folders are taken as the walk listed them); or, `justChanged`, as
 * walked and saved right after the change (so the folders are listed again).
 */
async function plan(
  root = bundle,
  options: { justChanged?: boolean } = {},
): Promise<{ tree: TreeHash; cache: StatCacheMap; savedAt: bigint }> {
  const store = memoryStatCache();
  const tree = await hashTree(root, { statCache: store });
  const cache = new StatCacheMap();
  for (const entry of (await store.load(tree.root)).values()) cache.set(entry.path, entry);
  const later = options.justChanged === true ? 0n : 60_000_000_000n;
  const folders = foldersOf(tree);
  if (folders !== undefined) folders.walkedAt += later;
  return { tree, cache, savedAt: BigInt(Date.now()) * 1_000_000n + later };
}

/**
 * The seal's outcome once its first comparison with the plan is over, as a
 * sweep makes it: what it found unverified, and what comparing every stat
 * then found changed (a file whose change time alone moved confirmed by its content).
 */
async function sealed(planned: { tree: TreeHash; cache: StatCacheMap; savedAt: bigint }) {
  const result = sealBundleFolder(planned.tree, planned.cache, planned.savedAt);
  if (!("seal" in result)) return result;
  const hashes = treeHashLookup(planned.tree);
  const confirm = (path: string): boolean => {
    const hash = hashes.get(path);
    return hash !== undefined && holdsHash(join(result.seal.root, path), hash);
  };
  const changed = result.unverified.length > 0 ? [] : await checkSealEveryStat(result.seal, 5, { confirm });
  releaseSeal(result.seal);
  return { seal: result.seal, unverified: [...result.unverified, ...changed] };
}

describe("sealing a bundle's own folder for a mounted view", () => {
  it("vouches for every file the plan's stat cache vouches for, and seals them with the plan's stats", async () => {
    const planned = await plan();
    const result = await sealed(planned);
    expect(result).toMatchObject({ unverified: [] });
    if (!("seal" in result)) throw new Error("not sealed");
    expect(result.seal.root).toBe(realpathSync(bundle));
    expect(result.seal.broken).toBeUndefined();
  });

  it("finds a file changed after the plan stat'ed it, same size and its modification time set back, before any job", async () => {
    const planned = await plan();
    const value = join(bundle, "value.txt");
    const before = statSync(value);
    writeFileSync(value, "V2");
    utimesSync(value, before.atime, before.mtime);
    expect(await sealed(planned)).toMatchObject({ unverified: ["value.txt"] });
  });

  it("finds a symlink retargeted after the plan, and one removed", async () => {
    const planned = await plan();
    unlinkSync(join(bundle, "current"));
    symlinkSync("v2.txt", join(bundle, "current"));
    expect(await sealed(planned)).toMatchObject({ unverified: ["current"] });
    unlinkSync(join(bundle, "current"));
    expect(await sealed(planned)).toMatchObject({ unverified: ["current"] });
  });

  it("refuses a folder holding what the tree does not: an ignored file, an empty folder", async () => {
    writeFileSync(join(bundle, ".kaosignore"), "notes.txt\n");
    writeFileSync(join(bundle, "notes.txt"), "not data");
    const planned = await plan();
    expect(await sealed(planned)).toEqual({ unmountable: "notes.txt" });
    rmSync(join(bundle, "notes.txt"));
    mkdirSync(join(bundle, "empty"));
    expect(await sealed(await plan())).toEqual({ unmountable: "empty" });
  });

  it("takes the folders as the plan's walk listed them: a file added since is found by its folder's modification time, the folder named", async () => {
    const planned = await plan();
    writeFileSync(join(bundle, "sub", "new.txt"), "new");
    expect(await sealed(planned)).toMatchObject({ unverified: ["sub"] });
  });

  it("finds a file added after the plan to a folder whose modification time is then set back (as cp -a or rsync -a do)", async () => {
    const sub = join(bundle, "sub");
    // Whole seconds, which utimes sets exactly.
    const earlier = Math.floor(Date.now() / 1000) - 3600;
    utimesSync(sub, earlier, earlier);
    const planned = await plan();
    writeFileSync(join(sub, "new.txt"), "new");
    utimesSync(sub, earlier, earlier);
    expect(statSync(sub).mtimeMs).toBe(earlier * 1000);
    expect(await sealed(planned)).toMatchObject({ unverified: ["sub"] });
  });

  it("lists the folders again when one changed within the racy window of the plan: a file added since is named", async () => {
    writeFileSync(join(bundle, "sub", "more.txt"), "more");
    const planned = await plan(bundle, { justChanged: true });
    writeFileSync(join(bundle, "sub", "new.txt"), "new");
    expect(await sealed(planned)).toEqual({ unmountable: "sub/new.txt" });
  });

  it("lists the folders again when the walk's root is no longer the bundle's folder", async () => {
    const planned = await plan();
    renameSync(bundle, join(dir, "moved"));
    mkdirSync(join(bundle, "sub"), { recursive: true });
    for (const [path, content] of [
      ["value.txt", "v1"],
      ["sub/more.txt", "more"],
      ["v1.txt", "one"],
      ["v2.txt", "two"],
    ] as const)
      writeFileSync(join(bundle, path), content);
    symlinkSync("v1.txt", join(bundle, "current"));
    writeFileSync(join(bundle, "extra.txt"), "extra");
    expect(await sealed(planned)).toEqual({ unmountable: "extra.txt" });
  });

  it("seals a bundle that is a symlink through its real path", async () => {
    const link = join(dir, "data-link");
    symlinkSync(bundle, link);
    const result = await sealed(await plan(link));
    if (!("seal" in result)) throw new Error("not sealed");
    expect(result.unverified).toEqual([]);
    expect(result.seal.root).toBe(realpathSync(bundle));
  });

  it.skipIf(process.getuid?.() !== 0)(
    "refuses a bundle with a file system mounted inside it, which a bind mount would hide (root: mounts a tmpfs)",
    async () => {
      const inner = join(bundle, "sub");
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", inner]);
      try {
        writeFileSync(join(inner, "inner.txt"), "inner");
        expect(await sealed(await plan())).toEqual({ unmountable: "sub" });
      } finally {
        execFileSync("umount", [inner]);
      }
    },
  );
});

describe("a mounted view's comparison with the plan (SweepComparison)", () => {
  it("started by the first job to end: in the idle threads while others may still read the data, and once only", async () => {
    const asked: boolean[] = [];
    const comparison = new SweepComparison(async (inBackground) => {
      asked.push(inBackground);
      return [];
    });
    comparison.expect(["a", "b", "c"]);
    comparison.ended("a");
    comparison.ended("a");
    expect(await comparison.result()).toEqual([]);
    comparison.ended("b");
    comparison.ended("c");
    await comparison.result();
    expect(asked).toEqual([true]);
    expect(comparison.lastCheckAt).toBeUndefined();
  });

  it("is the sweep's last check too when no job is left to read the data, its time taken before it starts", async () => {
    let startedAt: bigint | undefined;
    const comparison = new SweepComparison(async (inBackground) => {
      startedAt = BigInt(Date.now()) * 1_000_000n;
      return inBackground ? ["asked in the background"] : ["sub/more.txt"];
    });
    comparison.expect(["a", "b"]);
    comparison.ended("b");
    comparison.ended("a");
    const before = BigInt(Date.now()) * 1_000_000n;
    expect(await comparison.result()).toEqual(["sub/more.txt"]);
    expect(comparison.lastCheckAt).toBeGreaterThanOrEqual(before);
    expect(comparison.lastCheckAt).toBeLessThanOrEqual(startedAt!);
  });
});
