/**
 * The dashboard's page, script and styles, shipped in the package: the build
 * writes them to dist/ui/ (the client bundled with uPlot), and they are found
 * relative to the built module, as the hashing thread is. Nothing is fetched
 * from elsewhere, so the dashboard works offline.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { KaosError } from "../core/errors.js";

const FILES: Record<string, string> = {
  "/": "index.html",
  "/index.html": "index.html",
  "/app.js": "app.js",
  "/app.css": "app.css",
};

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
};

export interface Asset {
  body: Buffer;
  type: string;
}

/** The folder of the built assets: dist/ui/ beside the module that holds this code. */
export function assetsDir(): string {
  return fileURLToPath(new URL("./ui/", import.meta.url));
}

/** Loads every asset once, up front: a missing build is told at start, not on the first page load. */
export function loadAssets(dir = assetsDir()): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const [path, file] of Object.entries(FILES)) {
    let body: Buffer;
    try {
      body = readFileSync(`${dir}${file}`);
    } catch {
      throw new KaosError("IO", `the dashboard's files are missing from ${dir} (${file})`, {
        hint: "build kaos (npm run build) or reinstall the package",
      });
    }
    assets.set(path, { body, type: TYPES[file.slice(file.lastIndexOf(".") + 1)] ?? "application/octet-stream" });
  }
  return assets;
}
