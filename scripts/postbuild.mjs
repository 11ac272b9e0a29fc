// Makes the CLI entry executable so `node_modules/.bin/kaos` and `./dist/cli.js` both run.
import { chmodSync, existsSync } from "node:fs";

const cli = new URL("../dist/cli.js", import.meta.url);
if (existsSync(cli)) chmodSync(cli, 0o755);
