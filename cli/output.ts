// Where a command's output goes: a human table, or with --json exactly one JSON object on the
// last line of stdout (the human text then goes to stderr): { ok: true, ... } on success, and
// { ok: false, error } on failure (printed by main.ts).

export interface Output {
  readonly json: boolean;
  /** Human-readable text: stdout normally, stderr under --json. */
  info(text: string): void;
  /** The command's one result object (printed only under --json). */
  result(value: object): void;
}

export function makeOutput(json: boolean): Output {
  return {
    json,
    info: (text) => (json ? process.stderr : process.stdout).write(text.endsWith('\n') ? text : text + '\n'),
    result: (value) => {
      if (json) process.stdout.write(JSON.stringify({ ok: true, ...value }) + '\n');
    },
  };
}
