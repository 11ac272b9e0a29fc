import {
  appendFileSync,
  chmodSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { differingRowsInThreads, hashTree } from "../src/core/hash.js";
import { eventually } from "./helpers/faults.js";
import {
  checkSeal,
  checkSealEveryStat,
  markSealed,
  releaseSeal,
  removeAbandonedTemporaries,
  sealTree,
  writtenSinceSeal,
  type Seal,
} from "../src/core/snapshot.js";

let root: string;
const seals: Seal[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "kaos-seal-"));
  mkdirSync(join(root, "a", "b"), { recursive: true });
  writeFileSync(join(root, "top.txt"), "top");
  writeFileSync(join(root, "a", "b", "deep.txt"), "deep");
  // Whole seconds, which utimes can set back exactly (see the change whose folder's time is set back).
  const whole = Math.floor(Date.now() / 1000) - 60;
  utimesSync(join(root, "a"), whole, whole);
});

afterEach(() => {
  for (const seal of seals.splice(0)) releaseSeal(seal);
  rmSync(root, { recursive: true, force: true });
  rmSync(`${root}.sealed`, { force: true });
});

function seal(): Seal {
  const made = sealTree(root);
  seals.push(made);
  return made;
}

/**
 * Lets the event loop deliver what the kernel queued until the seal's watches
 * report an event, as the end of a job does (a seal without watches hears none).
 */
async function heardBy(made: Seal): Promise<void> {
  if (made.watchers !== undefined) await eventually(() => made.stirred, 30_000);
}

const changes: [string, () => void, string][] = [
  ["a write into a file deep down", () => appendFileSync(join(root, "a", "b", "deep.txt"), "more"), "a/b/deep.txt"],
  ["a new file", () => writeFileSync(join(root, "a", "new.txt"), "new"), "a"],
  ["a removed file", () => unlinkSync(join(root, "top.txt")), "top.txt"],
  [
    "a new file whose folder's modification time is set back",
    () => {
      const before = lstatSync(join(root, "a"), { bigint: true });
      writeFileSync(join(root, "a", "hidden.txt"), "hidden");
      utimesSync(join(root, "a"), Number(before.atimeNs / 1_000_000_000n), Number(before.mtimeNs / 1_000_000_000n));
    },
    "a",
  ],
  [
    "a same-size write whose time is set back",
    () => {
      writeFileSync(join(root, "top.txt"), "TOP");
      utimesSync(join(root, "top.txt"), new Date(0), new Date(0));
    },
    "top.txt",
  ],
];

describe("data view seals", () => {
  it("seals every entry in the byte order of its path, with its signature, found in any order", () => {
    mkdirSync(join(root, "a", "x"));
    for (const name of ["a-b.txt", "a.txt", "b", "\uFB01.txt", "\u{1F600}.txt"]) writeFileSync(join(root, name), name);
    const made = seal();
    expect([...made.stats].map(([path]) => path)).toEqual([
      "",
      "a-b.txt",
      "a.txt",
      "a",
      "a/b",
      "a/b/deep.txt",
      "a/x",
      "b",
      "top.txt",
      "\uFB01.txt",
      "\u{1F600}.txt",
    ]);
    const file = lstatSync(join(root, "a", "b", "deep.txt"), { bigint: true });
    const directory = lstatSync(join(root, "a"), { bigint: true });
    for (const path of ["top.txt", "a/b/deep.txt", "a", "nothing"]) {
      const expected =
        path === "a/b/deep.txt"
          ? `f:${file.ino}:${file.size}:${file.mtimeNs}|${file.ctimeNs}`
          : path === "a"
            ? `d:${directory.ino}::${directory.mtimeNs}`
            : undefined;
      if (path === "top.txt") expect(made.stats.get(path)).toMatch(/^f:\d+:3:\d+\|\d+$/);
      else expect(made.stats.get(path)).toBe(expected);
    }
    expect(made.stats.size).toBe(11);
  });

  for (const [what, change, path] of changes) {
    it(`finds ${what} on Linux through directory watches, and by comparing stats elsewhere`, async () => {
      const watched = seal();
      const compared = seal();
      releaseSeal(compared);
      expect(compared.watchers).toBeUndefined();
      if (process.platform === "linux") expect(watched.watchers?.length).toBe(3);
      expect(checkSeal(watched)).toEqual([]);
      expect(checkSeal(compared)).toEqual([]);
      change();
      await heardBy(watched);
      expect(checkSeal(watched)).toContain(path);
      expect(checkSeal(compared)).toContain(path);
      // Once broken, it stays broken.
      expect(watched.broken).toContain(path);
    });
  }

  it("with watches, stats are compared only after an event, and an event that changed no signature leaves the seal whole", async () => {
    if (process.platform !== "linux") return;
    const watched = seal();
    expect(checkSeal(watched)).toEqual([]);
    expect(watched.stirred).toBe(false);
    chmodSync(join(root, "top.txt"), 0o600);
    await heardBy(watched);
    expect(watched.stirred).toBe(true);
    // A mode change alters no part of the signature: the stats are compared, found equal, and the seal holds.
    expect(checkSeal(watched)).toEqual([]);
    expect(watched.stirred).toBe(false);
    expect(watched.broken).toBeUndefined();
  });

  it("without watches every check compares every stat", async () => {
    const compared = seal();
    releaseSeal(compared);
    writeFileSync(join(root, "a", "b", "deep.txt"), "DEEP");
    expect(checkSeal(compared)).toEqual(["a/b/deep.txt"]);
  });
});

describe("a sweep's last check of every stat of a big seal, shared with a hashing thread", () => {
  it("finds what changed in either half, vouches for a file whose content is confirmed, and finds what the thread's share holds", async () => {
    const files = 6000;
    for (let index = 0; index < files; index++) writeFileSync(join(root, `f${String(index).padStart(5, "0")}.txt`), String(index));
    // A walk of this many files leaves the hashing threads started and idle.
    await hashTree(root);
    const sealed = seal();
    releaseSeal(sealed);
    const size = sealed.stats.size;
    const shared = await differingRowsInThreads(sealed.root, size, (from, to) => sealed.stats.rows(from, to));
    expect(shared).toEqual([]);
    // One change in the calling thread's half, one in the thread's, and a file only linked elsewhere (its inode change time moved).
    writeFileSync(join(root, "f00010.txt"), "changed");
    writeFileSync(join(root, "f05990.txt"), "changed too");
    const linked = join(root, "f03000.txt");
    const link = `${root}.link`;
    linkSync(linked, link);
    unlinkSync(link);
    const differing = await differingRowsInThreads(sealed.root, size, (from, to) => sealed.stats.rows(from, to));
    expect(differing?.map((row) => sealed.stats.pathAt(row)).sort()).toEqual(["f00010.txt", "f03000.txt", "f05990.txt"]);
    // In the background the threads share every row, and find the same.
    const background = await differingRowsInThreads(sealed.root, size, (from, to) => sealed.stats.rows(from, to), { inBackground: true });
    expect(background?.map((row) => sealed.stats.pathAt(row)).sort()).toEqual(["f00010.txt", "f03000.txt", "f05990.txt"]);
    const confirmed: string[] = [];
    const changed = await checkSealEveryStat(sealed, 5, {
      confirm: (path) => {
        confirmed.push(path);
        return path === "f03000.txt";
      },
    });
    expect(changed).toEqual(["f00010.txt", "f05990.txt"]);
    expect(confirmed).toEqual(["f03000.txt"]);
    expect(sealed.broken).toEqual(["f00010.txt", "f05990.txt"]);
    expect(sealed.resealed).toBe(1);
  });

  it("a small seal is checked by the calling thread alone, as checkSeal does", async () => {
    const sealed = seal();
    releaseSeal(sealed);
    expect(await differingRowsInThreads(sealed.root, sealed.stats.size, (from, to) => sealed.stats.rows(from, to))).toBeUndefined();
    writeFileSync(join(root, "a", "b", "deep.txt"), "DEEP");
    expect(await checkSealEveryStat(sealed)).toEqual(["a/b/deep.txt"]);
  });
});

describe("what was written into a view after its seal, found after a crash", () => {
  const inode = (path: string) => {
    const stat = lstatSync(path, { bigint: true });
    return `${stat.dev}:${stat.ino}`;
  };

  it("finds nothing in a view laid out right before its seal, in the same clock tick, whatever the files' times", () => {
    for (let round = 0; round < 20; round++) {
      writeFileSync(join(root, `laid-out-${round}.txt`), "x");
      utimesSync(join(root, "top.txt"), new Date(0), new Date(4_000_000_000_000));
      chmodSync(join(root, "a"), 0o555);
      markSealed(seal());
      expect(writtenSinceSeal(root), `round ${round}`).toBeUndefined();
      chmodSync(join(root, "a"), 0o755);
    }
  });

  it("finds a same-size write whose modification time was set back, and an added file, however soon after the seal", () => {
    markSealed(seal());
    writeFileSync(join(root, "top.txt"), "TOP");
    utimesSync(join(root, "top.txt"), new Date(0), new Date(0));
    expect(writtenSinceSeal(root)).toEqual({
      files: [{ path: join(root, "top.txt"), inode: inode(join(root, "top.txt")) }],
      directories: false,
    });
    writeFileSync(join(root, "a", "new.txt"), "new");
    expect(writtenSinceSeal(root)?.directories).toBe(true);
  });

  it("suspects every file when the seal's time was never recorded", () => {
    expect(
      writtenSinceSeal(root)
        ?.files.map((file) => file.path)
        .sort(),
    ).toEqual([join(root, "a", "b", "deep.txt"), join(root, "top.txt")]);
  });
});

describe("work left by writers that died", () => {
  it("removes trees being laid out and listings being written whose process is gone, and nothing else", async () => {
    const { spawn } = await import("node:child_process");
    const exited = spawn("true");
    await new Promise((done) => exited.on("exit", done));
    const dead = exited.pid!;
    const alive = spawn("sleep", ["30"]);
    try {
      const names = {
        deadTree: `abc.building-${dead}-0123abcd`,
        deadListing: `def.jsonl.${dead}.89abcdef.tmp`,
        liveTree: `ghi.building-${alive.pid}-0123abcd`,
        ownListing: `jkl.jsonl.${process.pid}.89abcdef.tmp`,
        complete: "mno",
        lookalike: `pqr.building-x${dead}`,
      };
      const dir = join(root, "snapshots");
      mkdirSync(join(dir, names.deadTree, "inner"), { recursive: true });
      writeFileSync(join(dir, names.deadTree, "inner", "f"), "half");
      // Laid-out trees are read-only: removing one takes making it writable first.
      chmodSync(join(dir, names.deadTree, "inner"), 0o555);
      mkdirSync(join(dir, names.liveTree));
      mkdirSync(join(dir, names.complete));
      for (const name of [names.deadListing, names.ownListing, names.lookalike]) writeFileSync(join(dir, name), "x");
      expect(removeAbandonedTemporaries([dir, join(root, "no-such-dir")]).removed).toHaveLength(2);
      expect(readdirSync(dir).sort()).toEqual([names.complete, names.liveTree, names.lookalike, names.ownListing].sort());
    } finally {
      alive.kill();
    }
  });
});
