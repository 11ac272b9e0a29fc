import { describe, expect, it } from "vitest";
import { IMAGE_PATH_COMPONENT, NAME_PATTERN } from "../src/core/config-text.js";
import {
  imageNameProblem,
  imageRepository,
  MAX_IMAGE_NAME,
  pipelineNameProblem,
  repoNameProblem,
  workersName,
} from "../src/backends/kubernetes/names.js";

const component = new RegExp(`^${IMAGE_PATH_COMPONENT}$`);

/** Every name of up to `length` characters over `alphabet` that the config takes as a pipeline or workspace name. */
function configNames(alphabet: string, length: number): string[] {
  let names = [""];
  const all: string[] = [];
  for (let size = 1; size <= length; size++) {
    names = names.flatMap((name) => [...alphabet].map((char) => name + char));
    all.push(...names.filter((name) => NAME_PATTERN.test(name)));
  }
  return all;
}

describe("image repositories of pipelines", () => {
  it("keeps every name registries take as it is, so images built before keep their names", () => {
    expect(imageRepository("mnist", "svm")).toBe("mnist-svm");
    expect(imageRepository("Image_Classification", "My-Model")).toBe("image_classification-my-model");
    expect(imageRepository("ws", "a__b--c")).toBe("ws-a__b--c");
  });

  it("lowercases and turns the separators registries refuse into dashes: every name the config takes gives a valid repository", () => {
    expect(imageRepository("ws", "MNIST")).toBe("ws-mnist");
    expect(imageRepository("ws", "my_Model")).toBe("ws-my_model");
    expect(imageRepository("ws", "a_-b")).toBe("ws-a--b");
    expect(imageRepository("ws", "a___b")).toBe("ws-a---b");
    expect(imageRepository("ws", "model_")).toBe("ws-model");
    expect(imageRepository("ws_", "svm")).toBe("ws--svm");
    for (const name of configNames("aZ0_-", 5)) {
      const repository = imageRepository("ws", name);
      expect(repository, name).toMatch(component);
      // What the grammar took before stays as it was (lowercased).
      if (component.test(`ws-${name}`.toLowerCase())) expect(repository, name).toBe(`ws-${name}`.toLowerCase());
    }
  });

  it("refuses an image name over 255 characters, registry and repository without the tag", () => {
    const registry = `registry.example.com/${"a".repeat(MAX_IMAGE_NAME - 30)}`;
    expect(imageNameProblem("registry.example.com/ml", "mnist-svm")).toBeUndefined();
    expect(imageNameProblem(registry, "mnist-svm")).toBe(
      `the image name ${registry}/mnist-svm is 256 characters long; image names (registry and repository, without the tag) take at most 255`,
    );
  });
});

describe("Pachyderm names", () => {
  it("takes repo names of letters, digits, '_' and '-', as pachd's ancestry.ValidateName does", () => {
    expect(repoNameProblem("Image_Classification-My-Model-source")).toBeUndefined();
    expect(repoNameProblem("ws-a.b-source")).toBe(
      `the Pachyderm repo "ws-a.b-source" has characters Pachyderm refuses; Pachyderm names are letters, digits, '_' and '-'`,
    );
    expect(repoNameProblem("")).toContain("has characters Pachyderm refuses");
  });

  it("takes pipeline names pachd takes: its characters, starting alphanumeric, at most 51, workers' name at most 63", () => {
    expect(pipelineNameProblem("default", "mnist-svm-train")).toBeUndefined();
    expect(pipelineNameProblem("default", "_ws-svm-train")).toContain("starting with a letter or digit");
    expect(pipelineNameProblem("default", "ws-s m-train")).toContain("has characters Pachyderm refuses");
    expect(pipelineNameProblem("default", "x".repeat(52))).toBe(
      `the Pachyderm pipeline ${"x".repeat(52)} is 52 characters long; Pachyderm takes at most 51`,
    );
    const project = "a-rather-long-project-name";
    const name = "p".repeat(40);
    expect(pipelineNameProblem(project, name)).toBe(
      `the Kubernetes name of the Pachyderm pipeline ${name} in project ${project} (${workersName(project, name)}) is 71 characters long; Kubernetes takes at most 63`,
    );
  });
});
