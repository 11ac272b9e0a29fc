/**
 * What any program must do to hand a local data bundle to a job as a view of
 * hardlinks, and nothing else: make the bundle's directories under a fresh
 * directory, link every file into them, lstat every link and directory (the
 * seal before the job), then lstat each again (the check after it). The file
 * list is given, as a plan already holds it.
 *
 *   node bench/floors/link-view.mjs TREE PATHS_FILE DEST [THREADS]
 *
 * PATHS_FILE lists the tree's files, one relative path a line. With THREADS 1
 * (the default) everything runs on the main thread; with more, worker threads
 * take the directories in contiguous shares.
 */
import { linkSync, lstatSync, mkdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker, isMainThread, workerData } from "node:worker_threads";

function linkAndCheck(tree, dest, directories) {
  const linked = [];
  for (const [directory, names] of directories) {
    mkdirSync(`${dest}/${directory}`, { recursive: true });
    linked.push(`${dest}/${directory}`);
    for (const name of names) {
      const path = `${directory}/${name}`;
      linkSync(`${tree}/${path}`, `${dest}/${path}`);
      linked.push(`${dest}/${path}`);
    }
  }
  for (let pass = 0; pass < 2; pass++) for (const path of linked) lstatSync(path, { bigint: true });
}

if (isMainThread) {
  const [tree, pathsFile, dest, threadsArg = "1"] = process.argv.slice(2);
  const threads = Number(threadsArg);
  const directories = new Map();
  for (const path of readFileSync(pathsFile, "utf8").split("\n")) {
    if (path === "") continue;
    const slash = path.lastIndexOf("/");
    const directory = slash < 0 ? "." : path.slice(0, slash);
    const names = directories.get(directory);
    if (names === undefined) directories.set(directory, [path.slice(slash + 1)]);
    else names.push(path.slice(slash + 1));
  }
  if (directories.size === 0) throw new Error(`${pathsFile} lists no file`);
  const all = [...directories];
  if (threads === 1) {
    linkAndCheck(tree, dest, all);
  } else {
    const share = Math.ceil(all.length / threads);
    const script = fileURLToPath(import.meta.url);
    await Promise.all(
      Array.from({ length: threads }, (_, t) => {
        const worker = new Worker(script, { workerData: { tree, dest, directories: all.slice(t * share, (t + 1) * share) } });
        return new Promise((resolve, reject) => {
          worker.on("error", reject);
          worker.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`a linking thread exited with ${code}`))));
        });
      }),
    );
  }
} else {
  linkAndCheck(workerData.tree, workerData.dest, workerData.directories);
}
