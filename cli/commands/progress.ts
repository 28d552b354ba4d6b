// A progress display for long commands: a bar on a terminal, a line per stage otherwise.

import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total: number, label: string): void;
  stop(): void;
}

export function makeProgress(name: string): Progress {
  if (!process.stderr.isTTY) {
    let last = '';
    return {
      update: (done, total, label) => {
        const stage = label.replace(/\d+\/\d+/, '').replace(/step \d+/, 'step');
        if (stage !== last) process.stderr.write(`[${done}/${total}] ${label}\n`);
        last = stage;
      },
      stop: () => undefined,
    };
  }
  const bar = new cliProgress.SingleBar(
    { format: `${name} [{bar}] {value}/{total} {label}`, clearOnComplete: true, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update: (done, total, label) => {
      if (!started) bar.start(total, done, { label });
      started = true;
      bar.setTotal(total);
      bar.update(done, { label });
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}
