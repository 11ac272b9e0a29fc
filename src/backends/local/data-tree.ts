/** The data view an ingest lays out: each manifest path a hardlink to its stored object, and nothing else. */
import * as fs from "node:fs";
import * as path from "node:path";
import { errnoCode } from "../../core/errors.js";
import type { ObjectStore } from "../../core/objects.js";
import { ownerStamp } from "../../core/process-identity.js";

export class DataTree {
  /** Folders known to exist in a fresh tree, so each is created once. */
  private readonly folders = new Set<string>();

  private constructor(
    readonly finalDir: string,
    readonly workDir: string,
    readonly inPlace: boolean,
  ) {}

  static prepare(dataDir: string, wanted: Set<string>): DataTree {
    const finalDir = path.resolve(dataDir);
    let exists = false;
    try {
      exists = fs.statSync(finalDir).isDirectory();
    } catch {
      exists = false;
    }
    if (exists) {
      removeUnwanted(finalDir, "", wanted);
      return new DataTree(finalDir, finalDir, true);
    }
    fs.mkdirSync(path.dirname(finalDir), { recursive: true });
    const workDir = `${finalDir}.tmp-${ownerStamp()}-${Date.now().toString(36)}`;
    fs.mkdirSync(workDir);
    return new DataTree(finalDir, workDir, false);
  }

  place(objects: ObjectStore, hash: string, relative: string): void {
    const dest = path.join(this.workDir, relative);
    if (this.inPlace) {
      try {
        const current = fs.lstatSync(dest);
        const object = fs.statSync(objects.pathOf(hash));
        if (current.isFile() && current.ino === object.ino && current.dev === object.dev) return;
      } catch {
        // Missing or unreadable: link it below.
      }
    }
    if (this.inPlace) {
      objects.link(hash, dest);
      return;
    }
    // Nobody sees a fresh tree before commit(), so a plain link will do.
    const folder = path.dirname(dest);
    if (!this.folders.has(folder)) {
      fs.mkdirSync(folder, { recursive: true });
      this.folders.add(folder);
    }
    try {
      fs.linkSync(objects.pathOf(hash), dest);
    } catch {
      // Another device, a link limit, a file already there: the careful way.
      objects.link(hash, dest);
    }
  }

  remove(relative: string): void {
    fs.rmSync(path.join(this.workDir, relative), { force: true, recursive: true });
  }

  commit(): void {
    if (this.inPlace) return;
    try {
      fs.renameSync(this.workDir, this.finalDir);
    } catch (error) {
      const code = errnoCode(error);
      if (code !== "ENOTEMPTY" && code !== "EEXIST" && code !== "ENOTDIR") throw error;
      // Someone created it meanwhile: ours is complete, so it wins.
      fs.rmSync(this.finalDir, { recursive: true, force: true });
      fs.renameSync(this.workDir, this.finalDir);
    }
  }

  abandon(): void {
    if (!this.inPlace) fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}

/** Removes every file that is not wanted and every folder left empty. Returns whether `dir` is now empty. */
function removeUnwanted(root: string, relative: string, wanted: Set<string>): boolean {
  const dir = relative === "" ? root : path.join(root, relative);
  let remaining = 0;
  for (const dirent of fs.readdirSync(dir, { withFileTypes: true })) {
    const child = relative === "" ? dirent.name : `${relative}/${dirent.name}`;
    if (dirent.isDirectory()) {
      if (removeUnwanted(root, child, wanted)) fs.rmdirSync(path.join(root, child));
      else remaining++;
    } else if (wanted.has(child)) {
      remaining++;
    } else {
      fs.rmSync(path.join(root, child), { force: true });
    }
  }
  return remaining === 0;
}
