/**
 * Watched paths that are symlinks (a data folder linked to a dataset kept
 * elsewhere, `ln -sfn v2 data` to switch): the watcher follows a link to what
 * it points at and hears nothing when the link itself is pointed elsewhere.
 * The folder holding each link is watched here for that, and a link whose
 * target moved is reported, so that its new target is watched and the plan
 * reruns.
 */
import { type FSWatcher, lstatSync, realpathSync, watch } from "node:fs";
import { basename, dirname } from "node:path";

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

function targetOf(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch {
    return undefined;
  }
}

export class LinkWatcher {
  /** Each watched link with where it pointed when last looked at. */
  private links = new Map<string, string | undefined>();
  /** One watcher per folder holding links. */
  private folders = new Map<string, FSWatcher>();

  constructor(private readonly retargeted: (link: string) => void) {}

  /** Watches the links among `paths` (absolute) from now on, and no other. */
  update(paths: readonly string[]): void {
    const links = new Map<string, string | undefined>();
    for (const path of paths) if (isSymlink(path)) links.set(path, this.links.get(path) ?? targetOf(path));
    this.links = links;
    const folders = new Set([...links.keys()].map((link) => dirname(link)));
    for (const [folder, watcher] of this.folders) {
      if (folders.has(folder)) continue;
      watcher.close();
      this.folders.delete(folder);
    }
    for (const folder of folders) {
      if (this.folders.has(folder)) continue;
      try {
        const watcher = watch(folder, { persistent: false }, (_event, name) => this.onEvent(folder, name));
        // A folder that went away takes its links with it: the main watcher reports their targets gone.
        watcher.on("error", () => watcher.close());
        this.folders.set(folder, watcher);
      } catch {
        // Not watchable (gone, no permission): its links are followed as they were.
      }
    }
  }

  private onEvent(folder: string, name: string | null): void {
    for (const [link, before] of this.links) {
      if (dirname(link) !== folder || (name !== null && name !== basename(link))) continue;
      const after = targetOf(link);
      if (after === before) continue;
      this.links.set(link, after);
      this.retargeted(link);
    }
  }

  close(): void {
    for (const watcher of this.folders.values()) watcher.close();
    this.folders.clear();
    this.links.clear();
  }
}
