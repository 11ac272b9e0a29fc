/**
 * The setup the fault tests share: temp projects removed after the file, and
 * a tag in every kaos's environment so that whatever a test leaves running
 * (kaos, its jobs, their children) is found and killed after each test.
 */
import { randomBytes } from "node:crypto";
import { afterAll, afterEach } from "vitest";
import { killTagged, processesWithEnv } from "./faults.js";
import { makeProject, type FileMap, type Project } from "./rig.js";

export const TAG_NAME = "KAOS_FAULTS_TAG";

export interface TaggedProjects {
  /** This file's tag: `{ [TAG_NAME]: tag }` is in `env`. */
  readonly tag: string;
  /** The environment every kaos a test starts gets. */
  readonly env: Record<string, string>;
  /** A temp project of `files`, removed after the file's tests. */
  make(files: FileMap, prefix?: string): Project;
  /** The processes still running with this file's tag. */
  running(): number[];
}

/** Registers the hooks; call once at the top of a test file. */
export function taggedProjects(prefix: string): TaggedProjects {
  const tag = randomBytes(6).toString("hex");
  const projects: Project[] = [];
  afterEach(() => killTagged(TAG_NAME, tag));
  afterAll(() => {
    for (const project of projects) project.remove();
  });
  return {
    tag,
    env: { [TAG_NAME]: tag },
    make(files, madePrefix = prefix) {
      const made = makeProject(files, madePrefix);
      projects.push(made);
      return made;
    },
    running: () => processesWithEnv(TAG_NAME, tag),
  };
}
