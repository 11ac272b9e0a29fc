import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { KaosError } from "../src/core/errors.js";
import {
  type ManifestEntry,
  type ManifestLock,
  lockPathFor,
  manifestDataKey,
  readLock,
  readManifest,
  scanManifest,
  unsafePathReason,
  writeLock,
} from "../src/core/manifest.js";

const A = "a".repeat(64);
const B = "b".repeat(64);

let root: string;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "kaos-manifest-"));
});

afterEach(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

function manifestFile(text: string, name = "data_manifest"): string {
  const file = path.join(root, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
  return file;
}

/** The MANIFEST_INVALID message for a manifest holding `lines`. */
function errorFor(lines: string[]): string {
  const file = manifestFile(lines.join("\n") + "\n");
  try {
    readManifest(file);
  } catch (error) {
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("MANIFEST_INVALID");
    return (error as KaosError).message.replaceAll(file, "M");
  }
  throw new Error("the manifest was accepted");
}

const ok = `{"url": "https://example.com/a.csv", "path": "train/a.csv"}`;
const PATH_EXPECTED = `a relative path inside the data directory, such as "train/a.csv"`;

describe("readManifest", () => {
  it("reads entries with their file and line, skipping blank lines and a BOM", () => {
    const file = manifestFile(
      "\ufeff" +
        [
          ok,
          "",
          `{"url": "http://example.com/b.csv", "path": "test/b.csv", "sha256": "${A.toUpperCase()}", "size": 12}`,
          "   ",
          `{"url": "file:///srv/data/c.csv", "path": "c.csv"}`,
        ].join("\n"),
    );
    expect(readManifest(file)).toEqual<ManifestEntry[]>([
      { url: "https://example.com/a.csv", path: "train/a.csv", file, line: 1 },
      { url: "http://example.com/b.csv", path: "test/b.csv", sha256: A, size: 12, file, line: 3 },
      { url: "file:///srv/data/c.csv", path: "c.csv", file, line: 5 },
    ]);
  });

  it("reads every regular file of a directory in name order, skipping the lock (half-written too), dotfiles and subfolders", () => {
    const dir = path.join(root, "manifests");
    manifestFile(`{"url": "https://x/2", "path": "two"}\n`, "manifests/b_part");
    manifestFile(`{"url": "https://x/1", "path": "one"}\n`, "manifests/a_part");
    manifestFile(`not json`, "manifests/.hidden");
    manifestFile(`not json`, "manifests/kaos.lock");
    // A lock being written, or one a crash left before its rename.
    manifestFile(`{"version": 1, "ent`, "manifests/kaos.lock.tmp-4242");
    manifestFile(`not json`, "manifests/nested/file");
    expect(readManifest(dir).map((e) => [path.basename(e.file), e.line, e.path])).toEqual([
      ["a_part", 1, "one"],
      ["b_part", 1, "two"],
    ]);
  });

  it("names a link to nothing in a manifest directory instead of failing on it", () => {
    const dir = path.join(root, "manifests");
    manifestFile(`{"url": "https://x/1", "path": "one"}\n`, "manifests/a_part");
    fs.symlinkSync("gone", path.join(dir, "b_part"));
    expect(() => readManifest(dir)).toThrow(KaosError);
    expect(() => readManifest(dir)).toThrow(
      `${dir}/b_part: is a symbolic link to nothing — expected a JSON-lines manifest file in the manifest directory; remove it or point it at one`,
    );
  });

  it("names the file and line of bad JSON", () => {
    expect(errorFor([ok, `{"url": "https://x/b", "path": "b"`])).toMatch(
      /^M:2: invalid JSON \(.+\) — expected one JSON object per line, like \{"url": "https:\/\/example.com\/train\/a.csv", "path": "train\/a.csv"\}$/,
    );
  });

  it.each([
    [`[1, 2]`, `M:1: line is an array — expected a JSON object like {"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`],
    [
      `"just a string"`,
      `M:1: line is a string — expected a JSON object like {"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`,
    ],
    [`null`, `M:1: line is null — expected a JSON object like {"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`],
    [`{"path": "a"}`, `M:1: missing "url" — expected a string URL with scheme http, https or file`],
    [`{"url": 7, "path": "a"}`, `M:1: "url" is a number — expected a string URL with scheme http, https or file`],
    [
      `{"url": "not a url", "path": "a"}`,
      `M:1: "url" "not a url" is not a valid URL — expected an absolute URL such as https://example.com/a.csv`,
    ],
    [`{"url": "ftp://example.com/a", "path": "a"}`, `M:1: "url" has unsupported scheme "ftp" — expected http, https or file`],
    [`{"url": "s3://bucket/a", "path": "a"}`, `M:1: "url" has unsupported scheme "s3" — expected http, https or file`],
    [
      `{"url": "file://server/share/a", "path": "a"}`,
      `M:1: "url" names host "server" in a file URL — expected file:///absolute/path (no host)`,
    ],
    [`{"url": "https://x/a"}`, `M:1: missing "path" — expected a relative path inside the data directory, such as "train/a.csv"`],
    [
      `{"url": "https://x/a", "path": ["a"]}`,
      `M:1: "path" is an array — expected a relative path inside the data directory, such as "train/a.csv"`,
    ],
    [
      `{"url": "https://x/a", "path": "a", "sha256": "abc"}`,
      `M:1: "sha256" "abc" is not 64 hex digits — expected the SHA-256 of the file's content in hex`,
    ],
    [
      `{"url": "https://x/a", "path": "a", "sha256": 5}`,
      `M:1: "sha256" 5 is not 64 hex digits — expected the SHA-256 of the file's content in hex`,
    ],
    [
      `{"url": "https://x/a", "path": "a", "size": -1}`,
      `M:1: "size" -1 is not a non-negative integer — expected the file's length in bytes`,
    ],
    [
      `{"url": "https://x/a", "path": "a", "size": 1.5}`,
      `M:1: "size" 1.5 is not a non-negative integer — expected the file's length in bytes`,
    ],
    [
      `{"url": "https://x/a", "path": "a", "size": "10"}`,
      `M:1: "size" "10" is not a non-negative integer — expected the file's length in bytes`,
    ],
    [`{"url": "https://x/a", "path": "a", "md5": "x"}`, `M:1: unknown key "md5" — expected only "url", "path", "sha256" and "size"`],
  ])("rejects %s with an exact message", (line, message) => {
    expect(errorFor([line])).toBe(message);
  });

  it.each([
    ["/abs", "is absolute"],
    ["../x", "has a '..' segment"],
    ["a/../../x", "has a '..' segment"],
    ["a/..", "has a '..' segment"],
    ["..", "has a '..' segment"],
    ["a/./b", "has a '.' segment"],
    [".", "has a '.' segment"],
    ["a\\b", "contains a backslash"],
    ["..\\x", "contains a backslash"],
    ["C:/x", "starts with a Windows drive letter"],
    ["c:x", "starts with a Windows drive letter"],
    ["a//b", "has an empty segment (a leading, doubled or trailing '/')"],
    ["a/", "has an empty segment (a leading, doubled or trailing '/')"],
    ["", "is empty"],
    ["a\u0000b", "contains a NUL character"],
    [`a/${"x".repeat(256)}/b`, "has a segment of 256 bytes, longer than the 255 a file name may have"],
    ["é".repeat(128), "has a segment of 256 bytes, longer than the 255 a file name may have"],
  ])("rejects the unsafe path %j before anything is fetched", (unsafe, reason) => {
    expect(errorFor([ok, JSON.stringify({ url: "https://x/y", path: unsafe })])).toBe(
      `M:2: unsafe path ${JSON.stringify(unsafe)} (${reason}) — expected a relative path inside the data directory, such as "train/a.csv"`,
    );
  });

  it("accepts ordinary relative paths, dots inside names included", () => {
    for (const safe of ["a", "a/b/c.csv", ".hidden", "a/.b", "a..b", "...", "x/y..z/w", `${"x".repeat(255)}/${"é".repeat(127)}`])
      expect(unsafePathReason(safe)).toBeUndefined();
  });

  it("names both lines of a duplicate path, across files of a directory too", () => {
    expect(errorFor([ok, `{"url": "https://x/b", "path": "b"}`, `{"url": "https://x/other", "path": "train/a.csv"}`])).toBe(
      `M:3: duplicate path "train/a.csv" (first at M:1) — expected each path once`,
    );
    const one = manifestFile(`{"url": "https://x/1", "path": "same"}\n`, "dir/1");
    const two = manifestFile(`\n{"url": "https://x/2", "path": "same"}\n`, "dir/2");
    expect(() => readManifest(path.join(root, "dir"))).toThrow(
      `${two}:2: duplicate path "same" (first at ${one}:1) — expected each path once`,
    );
  });

  it("reports the first line in manifest order that repeats a path, or that is wrong in another way", () => {
    const at = (p: string, i: number) => `{"url": "https://x/${i}", "path": "${p}"}`;
    expect(errorFor([at("b", 1), at("a", 2), at("c", 3), at("a", 4), at("b", 5), at("a", 6)])).toBe(
      `M:4: duplicate path "a" (first at M:2) — expected each path once`,
    );
    expect(errorFor([at("b", 1), at("c", 2), at("c", 3), at("b", 4), `{"url": "https://x/5"`])).toBe(
      `M:3: duplicate path "c" (first at M:2) — expected each path once`,
    );
    expect(errorFor([at("b", 1), `{"url": "https://x/2"`, at("b", 3)])).toMatch(/^M:2: invalid JSON/);
    expect(errorFor([at("b", 1), at("b", 2), at("b/c", 3)])).toBe(`M:2: duplicate path "b" (first at M:1) — expected each path once`);
  });

  it("rejects a path that is both a file and a folder", () => {
    expect(errorFor([`{"url": "https://x/1", "path": "train"}`, `{"url": "https://x/2", "path": "train/a.csv"}`])).toBe(
      `M:2: path "train/a.csv" puts a file inside "train", which M:1 lists as a file — expected each path to be either a file or a folder, not both`,
    );
    expect(errorFor([`{"url": "https://x/2", "path": "train/a/b.csv"}`, `{"url": "https://x/1", "path": "train/a"}`])).toBe(
      `M:2: path "train/a" is a file, but M:1 puts "train/a/b.csv" inside it — expected each path to be either a file or a folder, not both`,
    );
  });

  it("names the line that is not UTF-8 rather than reading a path or URL changed by decoding", () => {
    const file = path.join(root, "latin1");
    fs.writeFileSync(
      file,
      Buffer.concat([Buffer.from(`${ok}\n{"url": "https://x/b", "path": "caf`), Buffer.from([0xe9]), Buffer.from(`"}\n`)]),
    );
    expect(() => readManifest(file)).toThrow(
      `${file}:2: the line holds bytes that are not UTF-8 — expected UTF-8 text (convert a file saved as UTF-16 or Latin-1)`,
    );
    const utf16 = path.join(root, "utf16");
    fs.writeFileSync(utf16, Buffer.from(`\ufeff${ok}\n`, "utf16le"));
    expect(() => readManifest(utf16)).toThrow(`${utf16}:1: the line holds bytes that are not UTF-8`);
  });

  it("rejects an empty manifest and a missing one", () => {
    const empty = manifestFile("\n\n");
    expect(() => readManifest(empty)).toThrow(
      `${empty}: the manifest has no entries — expected at least one line like {"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`,
    );
    const missing = path.join(root, "nope");
    expect(() => readManifest(missing)).toThrow(`${missing}: manifest does not exist — expected a file or a directory of JSON-lines files`);
  });
});

describe("the lock", () => {
  const lock: ManifestLock = {
    version: 1,
    entries: {
      "z.csv": { url: "https://x/z", sha256: B, size: 2, lastModified: "Mon, 01 Jan 2024 00:00:00 GMT", etag: '"z"' },
      "a.csv": { url: "https://x/a", sha256: A, size: 1 },
    },
  };

  it("sits beside a manifest file, and inside a manifest directory", () => {
    const file = manifestFile(ok);
    expect(lockPathFor(file)).toBe(`${file}.lock`);
    fs.mkdirSync(path.join(root, "dir"));
    expect(lockPathFor(path.join(root, "dir"))).toBe(path.join(root, "dir", "kaos.lock"));
  });

  it("is written with sorted keys, fixed field order and a trailing newline, and read back", () => {
    const file = manifestFile(ok);
    expect(readLock(file)).toBeUndefined();
    writeLock(file, lock);
    const text = fs.readFileSync(`${file}.lock`, "utf8");
    expect(text).toBe(
      `{
  "version": 1,
  "entries": {
    "a.csv": {
      "url": "https://x/a",
      "sha256": "${A}",
      "size": 1
    },
    "z.csv": {
      "url": "https://x/z",
      "sha256": "${B}",
      "size": 2,
      "etag": "\\"z\\"",
      "lastModified": "Mon, 01 Jan 2024 00:00:00 GMT"
    }
  }
}
`,
    );
    expect(readLock(file)).toEqual(lock);
    expect(fs.readdirSync(root).sort()).toEqual(["data_manifest", "data_manifest.lock"]);
  });

  it("names the lock and the fix when it is damaged", () => {
    const file = manifestFile(ok);
    fs.writeFileSync(`${file}.lock`, "{ nope");
    expect(() => readLock(file)).toThrow(`${file}.lock: the lock is not valid JSON`);
    fs.writeFileSync(
      `${file}.lock`,
      JSON.stringify({ version: 1, entries: { "a.csv": { url: "https://x/a", sha256: "short", size: 1 } } }),
    );
    let error: unknown;
    try {
      readLock(file);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("MANIFEST_INVALID");
    expect((error as KaosError).message).toBe(
      `${file}.lock: the lock is invalid at entries.a.csv.sha256: expected 64 lowercase hex digits`,
    );
    expect((error as KaosError).hint).toBe(`Delete ${file}.lock and run again: the manifest's content is then fetched and pinned afresh.`);
    fs.writeFileSync(`${file}.lock`, JSON.stringify({ version: 2, entries: {} }));
    expect(() => readLock(file)).toThrow(`${file}.lock: the lock is invalid at version`);
  });
});

describe("manifestDataKey", () => {
  const entry = (p: string, url: string, sha256?: string): ManifestEntry => ({
    url,
    path: p,
    file: "m",
    line: 1,
    ...(sha256 === undefined ? {} : { sha256 }),
  });
  const pin = (url: string, sha256: string, size = 1) => ({ url, sha256, size });

  it("is undefined until every entry has a known content hash", () => {
    expect(manifestDataKey([entry("a", "https://x/a")], undefined)).toBeUndefined();
    expect(manifestDataKey([entry("a", "https://x/a", A), entry("b", "https://x/b")], undefined)).toBeUndefined();
    expect(manifestDataKey([entry("a", "https://x/a", A)], undefined)).toMatch(/^[0-9a-f]{64}$/);
  });

  it("takes hashes from the lock when the URL matches, and ignores pins of another URL", () => {
    const lock: ManifestLock = { version: 1, entries: { a: pin("https://x/a", A) } };
    expect(manifestDataKey([entry("a", "https://x/a")], lock)).toBe(manifestDataKey([entry("a", "https://x/a", A)], undefined));
    expect(manifestDataKey([entry("a", "https://x/moved")], lock)).toBeUndefined();
  });

  it("takes the pin of another path for the same URL, as a file moved in the manifest keeps what its URL served", () => {
    const lock: ManifestLock = { version: 1, entries: { a: pin("https://x/a", A), b: pin("https://user:token@x/b", B) } };
    expect(manifestDataKey([entry("moved/a", "https://x/a")], lock)).toBe(manifestDataKey([entry("moved/a", "https://x/a", A)], undefined));
    expect(manifestDataKey([entry("a", "https://x/b"), entry("b", "https://other:secret@x/a")], lock)).toBe(
      manifestDataKey([entry("a", "https://x/b", B), entry("b", "https://x/a", A)], undefined),
    );
  });

  it("prefers the manifest's sha256 over the lock", () => {
    const lock: ManifestLock = { version: 1, entries: { a: pin("https://x/a", A) } };
    expect(manifestDataKey([entry("a", "https://x/a", B)], lock)).toBe(manifestDataKey([entry("a", "https://x/a", B)], undefined));
  });

  it("ignores line order and changes with any path, URL or content hash", () => {
    const base = [entry("a", "https://x/a", A), entry("b", "https://x/b", B)];
    const key = manifestDataKey(base, undefined);
    expect(manifestDataKey([...base].reverse(), undefined)).toBe(key);
    const variants = [
      [entry("a2", "https://x/a", A), entry("b", "https://x/b", B)],
      [entry("a", "https://x/a2", A), entry("b", "https://x/b", B)],
      [entry("a", "https://x/a", B), entry("b", "https://x/b", B)],
    ];
    const keys = new Set(variants.map((v) => manifestDataKey(v, undefined)));
    expect(keys.size).toBe(3);
    expect(keys.has(key)).toBe(false);
  });
});

describe("scanManifest", () => {
  const repoRoot = path.resolve(import.meta.dirname, "..");
  const line = (p: string, url: string, extra: Record<string, unknown> = {}) => JSON.stringify({ url, path: p, ...extra });

  it("gives the data key manifestDataKey gives over the same entries, in any order and whatever the paths hold", () => {
    const lines = [
      line("b/z.csv", "https://x/z", { sha256: A }),
      line("a.csv", "https://user:secret@x/a?part=1&X-Amz-Signature=s", { sha256: B }),
      line('quote"d/and\u0001control', "https://x/q", { sha256: A }),
      line("é/ü.csv", "https://x/%C3%A9", { sha256: B }),
      line("\ue000private", "https://x/p", { sha256: A }),
      line("\ud83d\ude00/astral", "https://x/s", { sha256: B }),
      line("\ud7ff", "https://x/h", { sha256: A }),
      line("b/a.csv", "https://x/tab\there", { sha256: B }),
      line("locked", "https://x/l"),
    ];
    const lock: ManifestLock = { version: 1, entries: { locked: { url: "https://x/l", sha256: A, size: 3 } } };
    for (const order of [lines, [...lines].reverse(), [...lines].sort()]) {
      const file = manifestFile(`${order.join("\n")}\n`);
      const scanned = scanManifest(file);
      expect(scanned.dataKey(lock)).toBe(manifestDataKey(readManifest(file), lock));
      expect(scanned.dataKey(undefined)).toBeUndefined();
    }
    const sorted = manifestFile(`${[line("a", "https://x/a", { sha256: A }), line("b", "https://x/b", { sha256: B })].join("\n")}\n`);
    expect(scanManifest(sorted).dataKey(undefined)).toBe(manifestDataKey(readManifest(sorted), undefined));
  });

  it("gives the data key manifestDataKey gives over thousands of unordered paths sharing long prefixes", () => {
    const lines = Array.from({ length: 5000 }, (_, i) =>
      line(`shared/prefix-${i % 37}/${i % 3 === 0 ? "x" : "xy"}/f-${String((i * 7919) % 5000).padStart(5, "0")}`, `https://x/${i}`, {
        sha256: i % 2 === 0 ? A : B,
      }),
    );
    const file = manifestFile(`${lines.join("\n")}\n`);
    expect(scanManifest(file).dataKey(undefined)).toBe(manifestDataKey(readManifest(file), undefined));
  });

  it("keeps the entries of thousands of lines, finding a duplicate and a file/folder clash among them", () => {
    const many = Array.from({ length: 5000 }, (_, i) => line(`d${i % 97}/f${i}`, `https://x/${i}`, { size: i }));
    const file = manifestFile(`${many.join("\n")}\n`);
    const scanned = scanManifest(file);
    expect(scanned.count).toBe(5000);
    expect(scanned.entry(4321)).toEqual({ url: "https://x/4321", path: "d53/f4321", size: 4321, file, line: 4322 });
    expect(errorFor([...many, line("d30/f1000", "https://x/again")])).toBe(
      `M:5001: duplicate path "d30/f1000" (first at M:1001) — expected each path once`,
    );
    expect(errorFor([...many, line("d30/f1000/inside", "https://x/again")])).toBe(
      `M:5001: path "d30/f1000/inside" puts a file inside "d30/f1000", which M:1001 lists as a file — expected each path to be either a file or a folder, not both`,
    );
  });

  it("rejects a path holding half a surrogate pair, which no file can be named", () => {
    expect(errorFor([line("a\ud800b", "https://x/a")])).toBe(
      `M:1: unsafe path "a\\ud800b" (contains an unpaired UTF-16 surrogate (not valid Unicode)) — expected a relative path inside the data directory, such as "train/a.csv"`,
    );
  });

  it("keeps the data key of a fixed manifest, so that applied state stays valid", () => {
    const file = manifestFile(
      `\ufeff${[
        `{"url": "https://data.example.com/train/a.csv", "path": "train/a.csv", "sha256": "${A}", "size": 10}`,
        `{"path":"train/b.csv","size":0,"sha256":"${B.toUpperCase()}","url":"http://data.example.com/train/b.csv"}`,
        `\t{ "url" : "https://user:secret@data.example.com/c?sig=1" , "path" : "c.csv" , "sha256" : "${A}" }\t\r`,
        `{"url": "https:\\/\\/data.example.com\\/d", "path": "escaped\\/d.csv", "sha256": "${B}"}`,
        `{"url": "https://data.example.com/é", "path": "unicode/é ü.csv", "sha256": "${A}"}`,
        `{"url": "https://data.example.com/e", "path": "\\u00e9/\\ud83d\\ude00", "sha256": "${B}", "size": 1e3}`,
        "",
        `{"url": "https://data.example.com/f", "path": "dup-key", "path": "last-wins", "sha256": "${A}"}`,
        `{"url": "HTTPS://DATA.example.com:443/g", "path": "upper/scheme", "sha256": "${B}"}`,
        `{"url": "https://data.example.com/locked", "path": "locked"}`,
      ].join("\r\n")}`,
    );
    const lock: ManifestLock = { version: 1, entries: { locked: { url: "https://data.example.com/locked", sha256: B, size: 5 } } };
    const key = "9e402e5ca6b521dfb2221e16a360ea80e0399e9dd31d1b41352c4f218f992bd1";
    expect(scanManifest(file).dataKey(lock)).toBe(key);
    expect(manifestDataKey(readManifest(file), lock)).toBe(key);
    expect(readManifest(file).map((entry) => [entry.line, entry.path, entry.url, entry.size])).toEqual([
      [1, "train/a.csv", "https://data.example.com/train/a.csv", 10],
      [2, "train/b.csv", "http://data.example.com/train/b.csv", 0],
      [3, "c.csv", "https://user:secret@data.example.com/c?sig=1", undefined],
      [4, "escaped/d.csv", "https://data.example.com/d", undefined],
      [5, "unicode/é ü.csv", "https://data.example.com/é", undefined],
      [6, "é/\ud83d\ude00", "https://data.example.com/e", 1000],
      [8, "last-wins", "https://data.example.com/f", undefined],
      [9, "upper/scheme", "HTTPS://DATA.example.com:443/g", undefined],
      [10, "locked", "https://data.example.com/locked", undefined],
    ]);
  });

  it.each([
    ["the usual shape", `{"url": "https://x.example/a", "path": "d/a.bin", "sha256": "${A}", "size": 12}`],
    ["no spaces, keys in another order", `{"size":12,"sha256":"${A}","path":"d/a.bin","url":"https://x.example/a"}`],
    ["spaces and tabs everywhere", `  {\t"url" :\t"https://x.example/a" ,"path":  "d/a.bin"\t, "size" : 0 }  `],
    ["a carriage return before the newline", `{"url": "https://x.example/a", "path": "d/a.bin"}\r`],
    ["an upper-case sha256", `{"url": "https://x.example/a", "path": "a", "sha256": "${"AbCdEf".repeat(10)}ABCD"}`],
    ["escapes in every string", `{"url": "https:\\/\\/x.example\\/\\u0061", "path": "d\\/\\u0061", "sha256": "\\u0061${"a".repeat(63)}"}`],
    ["escaped keys", `{"\\u0075rl": "https://x.example/a", "pat\\u0068": "a"}`],
    ["UTF-8 in the path and URL", `{"url": "https://x.example/é", "path": "é/ü 😀.csv"}`],
    ["a repeated key, the last one counting", `{"url": "https://x.example/a", "path": "first", "path": "second", "size": 1, "size": 2}`],
    ["a size with an exponent or a fraction", `{"url": "https://x.example/a", "path": "a", "size": 1.2e1}`],
    ["the largest safe size", `{"url": "https://x.example/a", "path": "a", "size": 9007199254740991}`],
    ["credentials and a query", `{"url": "http://user:secret@x.example:8080/a?sig=1#part", "path": "a"}`],
    ["a host after extra slashes", `{"url": "https:///x.example/a", "path": "a"}`],
    ["an upper-case scheme", `{"url": "HTTP://x.example/a", "path": "a"}`],
    ["a file URL", `{"url": "file:///srv/a", "path": "a"}`],
    ["a path with spaces and a leading dot", `{"url": "https://x.example/a", "path": ".d/a b/..c"}`],
  ])("reads a line with %s as JSON.parse reads it", (_, text) => {
    const file = manifestFile(`${text}\n`);
    const value = JSON.parse(text) as { url: string; path: string; sha256?: string; size?: number };
    const expected: ManifestEntry = { url: value.url, path: value.path, file, line: 1 };
    if (value.sha256 !== undefined) expected.sha256 = value.sha256.toLowerCase();
    if (value.size !== undefined) expected.size = value.size;
    expect(readManifest(file)).toEqual([expected]);
    const lock: ManifestLock = { version: 1, entries: { [value.path]: { url: value.url, sha256: B, size: value.size ?? 1 } } };
    expect(scanManifest(file).dataKey(lock)).toBe(manifestDataKey([expected], lock));
  });

  it.each([
    [
      `{"url": "https://[::1/a", "path": "a"}`,
      `M:1: "url" "https://[::1/a" is not a valid URL — expected an absolute URL such as https://example.com/a.csv`,
    ],
    [
      `{"url": "https://?a", "path": "a"}`,
      `M:1: "url" "https://?a" is not a valid URL — expected an absolute URL such as https://example.com/a.csv`,
    ],
    [`{"url": "https://x.example/a", "path": "a/./b"}`, `M:1: unsafe path "a/./b" (has a '.' segment) — expected ${PATH_EXPECTED}`],
    [`{"url": "https://x.example/a", "path": "a/../b"}`, `M:1: unsafe path "a/../b" (has a '..' segment) — expected ${PATH_EXPECTED}`],
    [
      `{"url": "https://x.example/a", "path": "a//b"}`,
      `M:1: unsafe path "a//b" (has an empty segment (a leading, doubled or trailing '/')) — expected ${PATH_EXPECTED}`,
    ],
    [`{"url": "https://x.example/a", "path": ""}`, `M:1: unsafe path "" (is empty) — expected ${PATH_EXPECTED}`],
    [
      `{"url": "https://x.example/a", "path": "a", "sha256": "${A.slice(1)}"}`,
      `M:1: "sha256" "${A.slice(1)}" is not 64 hex digits — expected the SHA-256 of the file's content in hex`,
    ],
    [
      `{"url": "https://x.example/a", "path": "a", "sha256": "${A.slice(1)}g"}`,
      `M:1: "sha256" "${A.slice(1)}g" is not 64 hex digits — expected the SHA-256 of the file's content in hex`,
    ],
    [
      `{"url": "https://x.example/a", "path": "a", "size": 9007199254740992}`,
      `M:1: "size" 9007199254740992 is not a non-negative integer — expected the file's length in bytes`,
    ],
    [
      `{"url": "https://x.example/a", "path": "a", "size": 12, "extra": 1}`,
      `M:1: unknown key "extra" — expected only "url", "path", "sha256" and "size"`,
    ],
    [`{"url": "https://x.example/a"}`, `M:1: missing "path" — expected ${PATH_EXPECTED}`],
  ])("gives %s the error it gives any line", (text, message) => {
    expect(errorFor([text])).toBe(message);
  });

  it("names the line of a bad URL, number or object of the usual shape, after good lines on the same host", () => {
    const good = (i: number) => `{"url": "https://x.example:8080/${i}", "path": "f${i}"}`;
    expect(errorFor([good(1), good(2), `{"url": "https://x.example:99999/3", "path": "f3"}`])).toBe(
      `M:3: "url" "https://x.example:99999/3" is not a valid URL — expected an absolute URL such as https://example.com/a.csv`,
    );
    expect(errorFor([good(1), `{"url": "https://x.example/2", "path": "f2", "size": 012}`])).toMatch(
      /^M:2: invalid JSON \(.+\) — expected one JSON object per line/,
    );
    expect(errorFor([good(1), `{"url": "https://x.example/2", "path": "f2",}`])).toMatch(
      /^M:2: invalid JSON \(.+\) — expected one JSON object per line/,
    );
    expect(errorFor([good(1), `{"url": "https://x.example/2", "path": "f2"} {}`])).toMatch(
      /^M:2: invalid JSON \(.+\) — expected one JSON object per line/,
    );
    expect(errorFor([good(1), `{"url": "https://x.example/2", "path": "f2"`])).toMatch(
      /^M:2: invalid JSON \(.+\) — expected one JSON object per line/,
    );
  });

  it("finds a file/folder clash whichever comes first, however far apart and however deep", () => {
    const filler = Array.from({ length: 3000 }, (_, i) => line(`deep/a/b${i % 7}/f${i}`, `https://x/${i}`));
    expect(errorFor([...filler, line("deep/a/b3", "https://x/late")])).toBe(
      `M:3001: path "deep/a/b3" is a file, but M:4 puts "deep/a/b3/f3" inside it — expected each path to be either a file or a folder, not both`,
    );
    expect(errorFor([line("deep/a", "https://x/early"), ...filler])).toBe(
      `M:2: path "deep/a/b0/f0" puts a file inside "deep/a", which M:1 lists as a file — expected each path to be either a file or a folder, not both`,
    );
    expect(scanManifest(manifestFile(`${[...filler, line("deep/a/b3x", "https://x/sibling")].join("\n")}\n`)).count).toBe(3001);
  });

  it("reads a line longer than its read buffer, and a last line without a newline", () => {
    const long = `https://x.example/${"a".repeat(5 << 20)}`;
    const file = manifestFile(
      `${line("first", "https://x.example/1")}\n${line("long", long, { size: 1 })}\n${line("last", "https://x.example/3")}`,
    );
    const scanned = scanManifest(file);
    expect(scanned.count).toBe(3);
    expect(scanned.entry(1)).toEqual({ url: long, path: "long", size: 1, file, line: 2 });
    expect(scanned.entry(2)).toEqual({ url: "https://x.example/3", path: "last", file, line: 3 });
  });

  it("reads lines of the usual shape from their bytes: no JSON.parse, one URL parsed per host", () => {
    const lines = Array.from({ length: 1000 }, (_, i) =>
      line(`part-${i % 10}/f-${i}.bin`, `https://host-${i % 2}.example/f-${i}.bin`, { sha256: A, size: i }),
    );
    const file = manifestFile(`${lines.join("\n")}\n`);
    const parse = vi.spyOn(JSON, "parse");
    const canParse = vi.spyOn(URL, "canParse");
    try {
      expect(scanManifest(file).count).toBe(1000);
      expect(parse).not.toHaveBeenCalled();
      expect(canParse).toHaveBeenCalledTimes(2);
    } finally {
      parse.mockRestore();
      canParse.mockRestore();
    }
  });

  it("counts the entries a store lacks, asking about their hashes in order of the first byte", () => {
    const hashOf = (i: number) => createHash("sha256").update(String(i)).digest("hex");
    const lines = Array.from({ length: 300 }, (_, i) => line(`f${i}`, `https://x/${i}`, i % 3 === 0 ? {} : { sha256: hashOf(i) }));
    const file = manifestFile(`${lines.join("\n")}\n`);
    const scanned = scanManifest(file);
    // The lock pins every third entry but one, whose URL moved.
    const entries: ManifestLock["entries"] = {};
    for (let i = 3; i < 300; i += 3) entries[`f${i}`] = { url: `https://x/${i}`, sha256: hashOf(i), size: 1 };
    const lock: ManifestLock = { version: 1, entries };
    entries["f150"] = { url: "https://x/moved", sha256: hashOf(150), size: 1 };
    const asked: string[] = [];
    const stored = new Set(Array.from({ length: 300 }, (_, i) => hashOf(i)).filter((_, i) => i % 2 === 0));
    const missing = scanned.countMissing(lock, (hash) => {
      asked.push(hash);
      return stored.has(hash);
    });
    // Unpinned: f0 and f150; of the others, the odd ones are not stored.
    expect(missing.entries).toBe(2 + Array.from({ length: 300 }, (_, i) => i).filter((i) => i % 2 === 1 && i !== 0 && i !== 150).length);
    expect(asked).toHaveLength(298);
    expect(asked.map((hash) => hash.slice(0, 2))).toEqual(asked.map((hash) => hash.slice(0, 2)).sort());
    expect(scanned.countMissing(lock, undefined).entries).toBe(300);
  });

  it("adds up the bytes a store lacks, from each line's size, else the lock's for the same content", () => {
    const file = manifestFile(
      `${[
        line("sized", "https://x/1", { size: 1000 }),
        line("pinned", "https://x/2"),
        line("moved", "https://x/3"),
        line("hashed", "https://x/4", { sha256: A }),
        line("unknown", "https://x/5"),
        line("stored", "https://x/6", { sha256: B, size: 7 }),
      ].join("\n")}\n`,
    );
    const lock: ManifestLock = {
      version: 1,
      entries: {
        pinned: { url: "https://x/2", sha256: A, size: 20 },
        // Pinned for another URL: its size says nothing of what the line's URL serves.
        moved: { url: "https://x/elsewhere", sha256: A, size: 300 },
        hashed: { url: "https://x/4", sha256: A, size: 4000 },
      },
    };
    const scanned = scanManifest(file);
    expect(scanned.countMissing(lock, (hash) => hash === B)).toEqual({ entries: 5, bytes: 1000 + 20 + 4000, unsized: 2 });
    expect(scanned.countMissing(lock, undefined)).toEqual({ entries: 6, bytes: 1000 + 20 + 4000 + 7, unsized: 2 });
    expect(scanned.countMissing(undefined, undefined)).toEqual({ entries: 6, bytes: 1000 + 7, unsized: 4 });
  });

  it("reads 300,000 lines in an old generation of 48 MB, keeping no object per entry (in a child process)", () => {
    const file = path.join(root, "big.jsonl");
    const fd = fs.openSync(file, "w");
    for (let start = 0; start < 300_000; start += 10_000) {
      const chunk: string[] = [];
      for (let i = start; i < start + 10_000; i++) {
        chunk.push(line(`part-${i % 1000}/f-${i}.bin`, `https://data.example.com/shard-${i % 1000}/f-${i}.bin`, { sha256: A, size: i }));
      }
      fs.writeSync(fd, `${chunk.join("\n")}\n`);
    }
    fs.closeSync(fd);
    const script = path.join(root, "child.ts");
    fs.writeFileSync(
      script,
      `import { scanManifest } from ${JSON.stringify(path.join(repoRoot, "src/core/manifest.js"))};
const scanned = scanManifest(process.argv[2]);
console.log(JSON.stringify({ count: scanned.count, key: scanned.dataKey(undefined) }));
`,
    );
    const child = spawnSync(process.execPath, ["--max-old-space-size=48", "--import", "jiti/register", script, file], {
      cwd: repoRoot,
      encoding: "utf8",
    });
    expect(child.stderr).not.toMatch(/heap out of memory/);
    expect(child.status).toBe(0);
    const { count, key } = JSON.parse(child.stdout.trim().split("\n").at(-1) ?? "{}") as { count: number; key: string };
    expect(count).toBe(300_000);
    expect(key).toMatch(/^[0-9a-f]{64}$/);
  });
});
