/**
 * What any no-op `kaos up` that plans in full (without an up-to-date record)
 * must do, and nothing else: start as
 * an ES module, open the state store with node:sqlite and read a few rows (the
 * applied plan, the last succeeded jobs, the stat caches), SHA-256 the config
 * file with node:crypto, list and lstat the source and data directories, and
 * record the run: one row written in a transaction.
 *
 *   node bench/floors/noop-up.mjs STATE_DB CONFIG DIR...
 *
 * STATE_DB is written to: give it a copy of a project's `.kaos/state.db`.
 */
import { createHash, randomBytes } from "node:crypto";
import { lstatSync, readFileSync, readdirSync } from "node:fs";
import { hostname } from "node:os";
import { DatabaseSync } from "node:sqlite";

const [stateDb, config, ...dirs] = process.argv.slice(2);
const db = new DatabaseSync(stateDb);
// The state store's own durability: a commit in WAL mode without a sync of its own.
db.exec("PRAGMA synchronous = NORMAL");
const statCaches = db.prepare("SELECT root, saved_at, entries FROM stat_cache");
// Saved times are nanoseconds, past what a JavaScript number holds.
statCaches.setReadBigInts(true);
const read =
  db.prepare("SELECT plan FROM applied").all().length +
  db.prepare("SELECT * FROM jobs WHERE stage = 'train' AND state = 'succeeded' ORDER BY seq DESC LIMIT 10").all().length +
  statCaches.all().length;
if (read === 0) throw new Error(`${stateDb} holds no applied plan, job or stat cache: is it a copy of a project's state?`);

createHash("sha256").update(readFileSync(config)).digest("hex");

const walk = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = `${dir}/${entry.name}`;
    lstatSync(path, { bigint: true });
    if (entry.isDirectory()) walk(path);
  }
};
for (const dir of dirs) walk(dir);

const now = new Date().toISOString();
db.exec("BEGIN IMMEDIATE");
db.prepare(
  "INSERT INTO runs (id, stack, command, started_at, finished_at, state, pid, host) VALUES (?, 'local', 'up', ?, ?, 'succeeded', ?, ?)",
).run(randomBytes(8).toString("hex"), now, now, process.pid, hostname());
db.exec("COMMIT");
db.close();
