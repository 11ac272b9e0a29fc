/**
 * `kaos completion bash|zsh|fish`: shell completion scripts derived from the
 * commander program itself, so a new command or option completes without
 * touching this file. What depends on the project (stack names, job ids,
 * template names) is asked of `kaos __complete KIND` when Tab is pressed.
 */
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { Argument, Command, Option } from "commander";
import { shellQuote as quoted } from "../backends/kubernetes/specs.js";
import { findConfigOfState, stackNames, stateDirOf } from "../core/layout.js";

export type Shell = "bash" | "zsh" | "fish";
export type DynamicKind = "stacks" | "jobs" | "templates" | "pipelines";

/** What a value (of an option or a positional argument) completes to. */
type ValueSource = { words: string[] } | { dynamic: DynamicKind } | { paths: "file" | "dir" } | { nothing: true };

interface OptionSpec {
  flags: string[];
  description: string;
  /** Undefined for a flag that takes no value. */
  value: ValueSource | undefined;
}

interface CommandSpec {
  /** Words after `kaos` that lead to this command, space-joined; "" for the program itself. */
  path: string;
  subcommands: { name: string; description: string }[];
  options: OptionSpec[];
  argument: ValueSource | undefined;
}

function placeholder(option: Option): string | undefined {
  return /[<[]([^>\]]+)[>\]]/.exec(option.flags)?.[1];
}

function optionValue(path: string, option: Option): ValueSource | undefined {
  if (!option.required && !option.optional) return undefined;
  if (option.argChoices) return { words: option.argChoices };
  if (option.attributeName() === "stack") return { dynamic: "stacks" };
  if (option.attributeName() === "pipeline") return { dynamic: "pipelines" };
  if (path === "template get" && option.attributeName() === "name") return { dynamic: "templates" };
  const name = placeholder(option);
  if (name === "dir") return { paths: "dir" };
  if (name === "file" || name === "path") return { paths: "file" };
  return { nothing: true };
}

function argumentValue(argument: Argument | undefined, siblings: string[]): ValueSource | undefined {
  if (argument === undefined) return undefined;
  if (argument.argChoices) return { words: argument.argChoices };
  if (argument.name() === "job") return { dynamic: "jobs" };
  if (argument.name() === "pipeline") return { dynamic: "pipelines" };
  // The implicit `help [command]`.
  if (argument.name() === "command") return { words: siblings.filter((name) => name !== "help") };
  return { nothing: true };
}

function optionSpec(path: string, option: Option): OptionSpec {
  return {
    flags: [option.short, option.long].filter((flag): flag is string => flag !== undefined),
    description: option.description,
    value: optionValue(path, option),
  };
}

/** Every visible command of the program, depth first, with what completes after it. */
export function describeProgram(program: Command): CommandSpec[] {
  const specs: CommandSpec[] = [];
  const help = program.createHelp();
  // Program options other than --version and --help work after any subcommand too.
  const globalOptions = help.visibleOptions(program).filter((option) => option.long !== "--version" && option.long !== "--help");
  const visit = (command: Command, path: string, siblings: string[]) => {
    const children = help.visibleCommands(command);
    const own = help.visibleOptions(command);
    const options = command === program ? own : [...own, ...globalOptions];
    specs.push({
      path,
      subcommands: children.map((child) => ({ name: child.name(), description: child.description() })),
      options: options.map((option) => optionSpec(path, option)),
      argument: argumentValue(command.registeredArguments[0], siblings),
    });
    const names = children.map((child) => child.name());
    for (const child of children) visit(child, path === "" ? child.name() : `${path} ${child.name()}`, names);
  };
  visit(program, "", []);
  return specs;
}

/** The values `kaos __complete KIND` prints, one a line; nothing when there are none (never an error). */
export async function dynamicValues(kind: DynamicKind, configPath: string | undefined): Promise<string[]> {
  const config = configPath !== undefined ? resolve(configPath) : findConfigOfState(process.cwd());
  const root = config !== undefined ? dirname(config) : process.cwd();
  if (kind === "templates") {
    const { templateNames } = await import("./templates.js");
    return templateNames();
  }
  if (kind === "stacks") {
    return stackNames(resolve(root));
  }
  if (kind === "pipelines") {
    if (config === undefined) return [];
    const { loadConfig } = await import("../core/config.js");
    return (await loadConfig({ cwd: process.cwd(), configPath: config })).pipelines.map((p) => p.name);
  }
  if (!existsSync(stateDirOf(resolve(root)))) return [];
  const { StateStore } = await import("../core/state.js");
  const state = StateStore.open(root, { readonly: true });
  try {
    return state.listJobs({}).map((job) => job.id);
  } finally {
    state.close();
  }
}

/** A single-quoted word for fish, which (unlike sh) reads \\ and \\' inside single quotes. */
function fishQuoted(text: string): string {
  return `'${text.replace(/[\\']/g, "\\$&")}'`;
}

function valueToken(value: ValueSource | undefined): string {
  if (value === undefined) return "flag";
  if ("words" in value) return `words ${value.words.join(" ")}`;
  if ("dynamic" in value) return value.dynamic;
  if ("paths" in value) return value.paths;
  return "nothing";
}

/**
 * Case statements shared by bash and zsh: the subcommands and options of a
 * command path, and what follows an option or the command itself.
 */
function posixLookups(specs: CommandSpec[]): string {
  const commands = specs.map((spec) => `    ${quoted(spec.path)}) echo ${quoted(spec.subcommands.map((sub) => sub.name).join(" "))} ;;`);
  const options = specs.map(
    (spec) => `    ${quoted(spec.path)}) echo ${quoted(spec.options.flatMap((option) => option.flags).join(" "))} ;;`,
  );
  const values = specs.flatMap((spec) =>
    spec.options
      .filter((option) => option.value !== undefined)
      .map(
        (option) =>
          `    ${option.flags.map((flag) => quoted(`${spec.path}|${flag}`)).join("|")}) echo ${quoted(valueToken(option.value))} ;;`,
      ),
  );
  const argumentsOf = specs
    .filter((spec) => spec.argument !== undefined)
    .map((spec) => `    ${quoted(spec.path)}) echo ${quoted(valueToken(spec.argument))} ;;`);
  const described = (kind: "commands" | "options") =>
    specs.map((spec) => {
      const lines =
        kind === "commands"
          ? spec.subcommands.map((sub) => `${sub.name}:${sub.description}`)
          : spec.options.flatMap((option) => option.flags.map((flag) => `${flag.replace(/:/g, "\\:")}:${option.description}`));
      return `    ${quoted(spec.path)}) printf '%s\\n' ${lines.map(quoted).join(" ")} ;;`;
    });
  return `__kaos_commands() {
  case "$1" in
${commands.join("\n")}
  esac
}

__kaos_options() {
  case "$1" in
${options.join("\n")}
  esac
}

# What follows option $2 of command path $1: flag (nothing), words W..., stacks,
# jobs, templates (asked of \`kaos __complete\`), file, dir, or nothing.
__kaos_value() {
  case "$1|$2" in
${values.join("\n")}
    *) echo flag ;;
  esac
}

__kaos_argument() {
  case "$1" in
${argumentsOf.join("\n")}
    *) echo nothing ;;
  esac
}

__kaos_described_commands() {
  case "$1" in
${described("commands").join("\n")}
  esac
}

__kaos_described_options() {
  case "$1" in
${described("options").join("\n")}
  esac
}

# Reads the words before the cursor: sets cmdpath (the command they name),
# value_of (the option whose value is being typed, if any) and config.
__kaos_walk() {
  local word sub i
  cmdpath="" value_of="" config=()
  for ((i = $1; i < $2; i++)); do
    word="\${__kaos_words[i]}"
    if [[ -n "$value_of" ]]; then
      [[ "$word" == "=" ]] && continue
      [[ "$value_of" == "-c" || "$value_of" == "--config" ]] && config=(--config "$word")
      value_of=""
      continue
    fi
    case "$word" in
      --*=*) [[ "\${word%%=*}" == "--config" ]] && config=(--config "\${word#*=}") ;;
      -*) [[ "$(__kaos_value "$cmdpath" "$word")" != flag ]] && value_of="$word" ;;
      *)
        for sub in $(__kaos_commands "$cmdpath"); do
          if [[ "$sub" == "$word" ]]; then
            cmdpath="\${cmdpath:+$cmdpath }$word"
            break
          fi
        done
        ;;
    esac
  done
}
`;
}

function bashScript(specs: CommandSpec[]): string {
  return `# bash completion for kaos, generated by \`kaos completion bash\`.
# Load it in ~/.bashrc with: source <(kaos completion bash)

${posixLookups(specs)}
__kaos_reply() {
  local kind="\${1%% *}" words="\${1#* }"
  case "$kind" in
    words) COMPREPLY=($(compgen -W "$words" -- "$cur")) ;;
    stacks|jobs|templates|pipelines) COMPREPLY=($(compgen -W "$("\${COMP_WORDS[0]}" __complete "$kind" "\${config[@]}" 2>/dev/null)" -- "$cur")) ;;
    file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
    dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")) ;;
    *) COMPREPLY=() ;;
  esac
}

_kaos() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmdpath value_of
  local -a config __kaos_words=("\${COMP_WORDS[@]}")
  __kaos_walk 1 "$COMP_CWORD"
  # "--stack=" is split into "--stack" "=": what is typed comes after the "=".
  [[ "$cur" == "=" ]] && cur=""
  if [[ -n "$value_of" ]]; then
    __kaos_reply "$(__kaos_value "$cmdpath" "$value_of")"
  elif [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(__kaos_options "$cmdpath")" -- "$cur"))
  elif [[ -n "$(__kaos_commands "$cmdpath")" ]]; then
    COMPREPLY=($(compgen -W "$(__kaos_commands "$cmdpath")" -- "$cur"))
  else
    __kaos_reply "$(__kaos_argument "$cmdpath")"
  fi
}

complete -F _kaos kaos
`;
}

function zshScript(specs: CommandSpec[]): string {
  return `#compdef kaos
# zsh completion for kaos, generated by \`kaos completion zsh\`.
# Load it in ~/.zshrc, after compinit, with: source <(kaos completion zsh)

${posixLookups(specs)}
__kaos_zsh_reply() {
  local kind="\${1%% *}" rest="\${1#* }"
  case "$kind" in
    words) compadd -- \${=rest} ;;
    stacks|jobs|templates|pipelines) compadd -- \${(f)"$("\${words[1]}" __complete "$kind" "\${config[@]}" 2>/dev/null)"} ;;
    file) _files ;;
    dir) _files -/ ;;
  esac
}

_kaos() {
  local cur="\${words[CURRENT]}" cmdpath value_of
  local -a config described __kaos_words
  __kaos_words=("\${words[@]}")
  __kaos_walk 2 "$CURRENT"
  if [[ -z "$value_of" && "$cur" == --*=* ]]; then
    value_of="\${cur%%=*}"
    compset -P '*='
  fi
  if [[ -n "$value_of" ]]; then
    __kaos_zsh_reply "$(__kaos_value "$cmdpath" "$value_of")"
  elif [[ "$cur" == -* ]]; then
    described=("\${(@f)$(__kaos_described_options "$cmdpath")}")
    _describe -t options option described
  elif [[ -n "$(__kaos_commands "$cmdpath")" ]]; then
    described=("\${(@f)$(__kaos_described_commands "$cmdpath")}")
    _describe -t commands command described
  else
    __kaos_zsh_reply "$(__kaos_argument "$cmdpath")"
  fi
}

if [[ "\${funcstack[1]}" == "_kaos" ]]; then
  _kaos "$@"
else
  compdef _kaos kaos
fi
`;
}

function fishScript(specs: CommandSpec[]): string {
  const lines: string[] = [];
  const at = (path: string) => fishQuoted(`__kaos_at ${JSON.stringify(path)}`);
  for (const spec of specs) {
    for (const sub of spec.subcommands)
      lines.push(`complete -c kaos -n ${at(spec.path)} -a ${fishQuoted(sub.name)} -d ${fishQuoted(sub.description)}`);
    for (const option of spec.options) {
      const flags = option.flags.map((flag) => (flag.startsWith("--") ? `-l ${flag.slice(2)}` : `-s ${flag.slice(1)}`)).join(" ");
      lines.push(`complete -c kaos -n ${at(spec.path)} ${flags}${fishValue(option.value, true)} -d ${fishQuoted(option.description)}`);
    }
    if (spec.argument !== undefined && spec.subcommands.length === 0) {
      const value = fishValue(spec.argument, false);
      if (value !== "") lines.push(`complete -c kaos -n ${at(spec.path)}${value}`);
    }
  }
  const commandCases = specs.map(
    (spec) => `    case ${fishQuoted(spec.path)}\n      printf '%s\\n' ${spec.subcommands.map((sub) => fishQuoted(sub.name)).join(" ")}`,
  );
  const valued = specs.flatMap((spec) =>
    spec.options
      .filter((option) => option.value !== undefined)
      .flatMap((option) => option.flags.map((flag) => fishQuoted(`${spec.path}|${flag}`))),
  );
  return `# fish completion for kaos, generated by \`kaos completion fish\`.
# Load it with: kaos completion fish | source
# (or save it as ~/.config/fish/completions/kaos.fish)

function __kaos_commands
  switch "$argv[1]"
${commandCases.join("\n")}
  end
end

function __kaos_takes_value
  contains -- "$argv[1]|$argv[2]" ${valued.join(" ")}
end

# The command path named by the words before the cursor ("" for kaos itself).
function __kaos_path
  set -l tokens (commandline -opc)
  set -l cmdpath ""
  set -l value_of ""
  for word in $tokens[2..-1]
    if test -n "$value_of"
      set value_of ""
      continue
    end
    switch $word
      case '--*=*'
      case '-*'
        if __kaos_takes_value "$cmdpath" $word
          set value_of $word
        end
      case '*'
        if contains -- $word (__kaos_commands "$cmdpath")
          if test -z "$cmdpath"
            set cmdpath $word
          else
            set cmdpath "$cmdpath $word"
          end
        end
    end
  end
  echo $cmdpath
end

function __kaos_at
  test (__kaos_path) = "$argv[1]"
end

function __kaos_dynamic
  set -l tokens (commandline -opc)
  set -l config
  set -l i (contains -i -- --config $tokens; or contains -i -- -c $tokens)
  if test -n "$i"; and test (count $tokens) -gt $i
    set config --config $tokens[(math $i + 1)]
  end
  $tokens[1] __complete $argv[1] $config 2>/dev/null
end

complete -c kaos -f
${lines.join("\n")}
`;
}

function fishValue(value: ValueSource | undefined, isOption: boolean): string {
  // -x: takes a value and files are not offered (-r alone would offer them); -F: files are.
  const exclusive = isOption ? " -x" : "";
  if (value === undefined) return "";
  if ("words" in value) return `${exclusive} -a ${fishQuoted(value.words.join(" "))}`;
  if ("dynamic" in value) return `${exclusive} -a ${fishQuoted(`(__kaos_dynamic ${value.dynamic})`)}`;
  if ("paths" in value)
    return value.paths === "file" ? `${isOption ? " -r" : ""} -F` : `${exclusive} -a ${fishQuoted("(__fish_complete_directories)")}`;
  return exclusive;
}

export function completionScript(shell: Shell, program: Command): string {
  const specs = describeProgram(program);
  if (shell === "bash") return bashScript(specs);
  if (shell === "zsh") return zshScript(specs);
  return fishScript(specs);
}
