import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { KaosError } from "../src/core/errors.js";
import { ObjectStore, sha256File } from "../src/core/objects.js";

function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

let root: string;
let store: ObjectStore;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "kaos-objects-"));
  store = new ObjectStore(path.join(root, "objects"));
});

afterEach(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

function write(name: string, content: string | Buffer): string {
  const file = path.join(root, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
  return file;
}

describe("ObjectStore", () => {
  it("answers has for many hashes from one listing of each folder, whatever order they come in", async () => {
    const stored: string[] = [];
    for (const content of ["a", "b", "c", "d", "e", "f", "g", "h"])
      stored.push(await store.putStream(Readable.from([content])).then((r) => r.hash));
    const absent = ["x", "y", "z"].map((content) => sha256(content));
    const has = store.hasEach();
    for (const hash of [...stored, ...absent, ...[...stored].reverse(), ...absent]) expect(has(hash)).toBe(store.has(hash));
    // A folder listed before an object was added to it is listed again once another folder was asked about.
    const late = sha256("late");
    expect(has(late)).toBe(false);
    await store.putStream(Readable.from(["late"]));
    expect(has(absent.find((hash) => hash.slice(0, 2) !== late.slice(0, 2))!)).toBe(false);
    expect(has(late)).toBe(true);
    expect(() => has("../../etc/passwd")).toThrow(KaosError);
  });

  it("lays objects out as sha256/<2 hex>/<62 hex>", () => {
    const hash = sha256("x");
    expect(store.pathOf(hash)).toBe(path.join(root, "objects", "sha256", hash.slice(0, 2), hash.slice(2)));
    expect(store.has(hash)).toBe(false);
    expect(() => store.pathOf("../../etc/passwd")).toThrow(KaosError);
    expect(() => store.pathOf(hash.toUpperCase())).toThrow("is not a SHA-256 object name — expected 64 lowercase hex digits");
  });

  it("stores a file read-only under its hash, atomically, and leaves the source alone", async () => {
    const source = write("a.csv", "1,2\n");
    const hash = await store.putFile(source);
    expect(hash).toBe(sha256("1,2\n"));
    expect(store.has(hash)).toBe(true);
    expect(fs.readFileSync(store.pathOf(hash), "utf8")).toBe("1,2\n");
    expect(fs.statSync(store.pathOf(hash)).mode & 0o777).toBe(0o444);
    expect(fs.statSync(source).mode & 0o222).not.toBe(0);
    expect(fs.readdirSync(store.tmpDir())).toEqual([]);
  });

  it("verifies the expected hash and stores nothing on a mismatch", async () => {
    const source = write("a.csv", "real");
    const wrong = sha256("other");
    await expect(store.putFile(source, wrong)).rejects.toThrow(`${source}: sha256 is ${sha256("real")} — expected ${wrong}`);
    expect(store.has(sha256("real"))).toBe(false);
    expect(fs.readdirSync(store.tmpDir())).toEqual([]);
    expect(await store.putFile(source, sha256("real"))).toBe(sha256("real"));
  });

  it("reports a missing source as a KaosError naming it", async () => {
    const missing = path.join(root, "nope");
    await expect(store.putFile(missing)).rejects.toThrow(`cannot store ${missing} in ${store.dir}`);
  });

  it("streams content in, hashing on the fly", async () => {
    const chunks = Array.from({ length: 50 }, (_, i) => Buffer.alloc(10_000, i));
    const { hash, size } = await store.putStream(Readable.from(chunks));
    expect(size).toBe(500_000);
    expect(hash).toBe(sha256(Buffer.concat(chunks)));
    expect((await sha256File(store.pathOf(hash))).hash).toBe(hash);
    await expect(store.putStream(Readable.from([Buffer.from("abc")]), sha256("abd"))).rejects.toThrow(
      `stream content has sha256 ${sha256("abc")} — expected ${sha256("abd")}`,
    );
    expect(store.has(sha256("abc"))).toBe(false);
  });

  it("removes the temporary file when a stream fails midway", async () => {
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(1000, 1));
        this.destroy(new Error("network went away"));
      },
    });
    await expect(store.putStream(failing)).rejects.toThrow("network went away");
    expect(fs.readdirSync(store.tmpDir())).toEqual([]);
  });

  it("keeps the first copy of identical content (one inode)", async () => {
    const first = await store.putFile(write("one", "same"));
    const inode = fs.statSync(store.pathOf(first)).ino;
    const tmp = path.join(store.tmpDir(), "incoming");
    fs.writeFileSync(tmp, "same");
    expect(store.adopt(tmp, first)).toBe(store.pathOf(first));
    expect(fs.existsSync(tmp)).toBe(false);
    expect(fs.statSync(store.pathOf(first)).ino).toBe(inode);
    expect(await store.putFile(write("two", "same"))).toBe(first);
    expect(fs.statSync(store.pathOf(first)).ino).toBe(inode);
  });

  it("links objects into place as hardlinks, replacing what was there", async () => {
    const hash = await store.putFile(write("src", "payload"));
    const dest = path.join(root, "data", "deep", "file.bin");
    store.link(hash, dest);
    const object = fs.statSync(store.pathOf(hash));
    expect(fs.statSync(dest).ino).toBe(object.ino);
    expect(fs.statSync(store.pathOf(hash)).nlink).toBe(2);

    const other = await store.putFile(write("src2", "other payload"));
    store.link(other, dest);
    expect(fs.readFileSync(dest, "utf8")).toBe("other payload");
    expect(fs.statSync(store.pathOf(hash)).nlink).toBe(1);
    expect(fs.readdirSync(path.dirname(dest))).toEqual(["file.bin"]);
  });

  it("materializes executables as 0755 copies so the shared object stays read-only", async () => {
    const hash = await store.putFile(write("train", "#!/bin/sh\necho hi\n"));
    const dest = path.join(root, "bundle", "train");
    store.link(hash, dest, "exec");
    const stat = fs.statSync(dest);
    expect(stat.mode & 0o777).toBe(0o755);
    expect(stat.ino).not.toBe(fs.statSync(store.pathOf(hash)).ino);
    expect(fs.statSync(store.pathOf(hash)).mode & 0o777).toBe(0o444);
    expect(fs.readFileSync(dest, "utf8")).toBe("#!/bin/sh\necho hi\n");
  });

  it("says which object is missing when linking one that is not stored", () => {
    const hash = sha256("never stored");
    expect(() => store.link(hash, path.join(root, "x"))).toThrow(`object ${hash} is missing from ${store.dir}`);
  });

  it("recreates its scratch directory if the store was deleted underneath it", async () => {
    await store.putFile(write("a", "a"));
    fs.rmSync(store.dir, { recursive: true });
    expect(await store.putFile(write("b", "b"))).toBe(sha256("b"));
  });
});
