import { defineStack } from "kaos-ml";

// The embedded backend: jobs run on this machine, state in .kaos/ beside kaos.config.ts.
export default defineStack({
  backend: "local",
  // maxCpu: 2,        // cores kaos may hand to jobs at once (default: every core)
  // maxMemory: "8Gi", // memory kaos may hand to jobs at once (default: the machine's memory)
});
