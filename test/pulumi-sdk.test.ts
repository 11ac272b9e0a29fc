/**
 * What kaos relies on in the installed Pulumi SDK beyond its typed, public
 * API. Each of these is marked internal or private in the SDK, so an upgrade
 * may take it away without a type error: this test names what went.
 */
import { describe, expect, it } from "vitest";
import * as automation from "@pulumi/pulumi/automation/index.js";
import { commandOutcome } from "../src/backends/kubernetes/automation.js";
import { sdkCommandError } from "../src/backends/kubernetes/pulumi-runner.js";

describe("the Pulumi SDK kaos drives", () => {
  it("has the public API kaos calls: PulumiCommand.get and .install, LocalWorkspace.createOrSelectStack, the error classes", () => {
    expect(typeof automation.PulumiCommand.get).toBe("function");
    expect(typeof automation.PulumiCommand.install).toBe("function");
    expect(typeof automation.LocalWorkspace.createOrSelectStack).toBe("function");
    const { CommandError, ConcurrentUpdateError, StackNotFoundError, StackAlreadyExistsError } = automation;
    for (const [name, type] of Object.entries({ CommandError, ConcurrentUpdateError, StackNotFoundError, StackAlreadyExistsError })) {
      expect(typeof type, name).toBe("function");
    }
    expect(Object.getPrototypeOf(automation.ConcurrentUpdateError)).toBe(automation.CommandError);
  });

  it("calls `run(args, cwd, env, onOutput, onError, signal)` on the command it is given (what a test's injected runner provides)", () => {
    const run = (automation.PulumiCommand.prototype as unknown as { run?: unknown }).run;
    expect(typeof run).toBe("function");
    expect((run as (...args: unknown[]) => unknown).length).toBe(6);
  });

  it("builds its errors from a command's outcome and words their message as kaos reads it back", () => {
    const outcome = {
      stdout: "some output",
      stderr: "error: no stack named 'cluster' found\nmore",
      code: 255,
      toString() {
        return `code: ${this.code}\n stdout: ${this.stdout}\n stderr: ${this.stderr}\n err?: \n`;
      },
    };
    const notFound = sdkCommandError(outcome as Parameters<typeof sdkCommandError>[0]);
    expect(notFound).toBeInstanceOf(automation.StackNotFoundError);
    expect(notFound).toBeInstanceOf(automation.CommandError);
    expect(commandOutcome(notFound)).toEqual({ code: 255, stdout: "some output", stderr: outcome.stderr, err: "" });
    const locked = sdkCommandError({ ...outcome, stderr: "error: the stack is currently locked by 1 lock(s)" } as Parameters<
      typeof sdkCommandError
    >[0]);
    expect(locked).toBeInstanceOf(automation.ConcurrentUpdateError);
  });

  it("words a failed command's CommandError as kaos parses it, when the SDK runs the CLI itself", async () => {
    // A missing binary: the SDK's own runner fails with a CommandError, as it does for every failed command.
    const error = await automation.PulumiCommand.get({ root: "/nonexistent-kaos-pulumi-root" }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(automation.CommandError);
    const outcome = commandOutcome(error as Error);
    expect(outcome?.code).toBe(-2);
    expect(outcome?.err).toMatch(/ENOENT/);
  });
});
