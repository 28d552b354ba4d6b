// A dependency-free x/y line chart (points joined in x order), for reports that plot one metric
// against another (e.g. recall against bytes read).

import type { ChartSeries } from './svg-chart.ts';

export interface LineSeries {
  readonly label: string;
  readonly points: readonly { readonly x: number; readonly y: number; readonly label?: string }[];
}

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948'];

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}

function niceRange(values: readonly number[]): [number, number] {
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
  return [lo - pad, hi + pad];
}

export function lineChartSvg(
  title: string,
  axes: { readonly x: string; readonly y: string },
  series: readonly LineSeries[],
): string {
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const [x0, x1] = niceRange(xs.length ? xs : [0, 1]);
  const [y0, y1] = niceRange(ys.length ? ys : [0, 1]);
  const left = 70;
  const top = 40;
  const plotW = 520;
  const plotH = 300;
  const width = left + plotW + 30;
  const height = top + plotH + 60 + series.length * 16;
  const px = (x: number) => left + ((x - x0) / (x1 - x0)) * plotW;
  const py = (y: number) => top + plotH - ((y - y0) / (y1 - y0)) * plotH;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="20" font-size="14">${escapeXml(title)}</text>`,
    `<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="black"/>`,
    `<text x="${left + plotW / 2}" y="${top + plotH + 32}" text-anchor="middle">${escapeXml(axes.x)}</text>`,
    `<text transform="translate(16,${top + plotH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(axes.y)}</text>`,
  ];
  for (let tick = 0; tick <= 4; tick++) {
    const xv = x0 + ((x1 - x0) * tick) / 4;
    const yv = y0 + ((y1 - y0) * tick) / 4;
    parts.push(`<line x1="${px(xv)}" y1="${top}" x2="${px(xv)}" y2="${top + plotH}" stroke="#eee"/>`);
    parts.push(`<line x1="${left}" y1="${py(yv)}" x2="${left + plotW}" y2="${py(yv)}" stroke="#eee"/>`);
    parts.push(
      `<text x="${px(xv)}" y="${top + plotH + 14}" text-anchor="middle">${xv.toPrecision(3)}</text>`,
    );
    parts.push(`<text x="${left - 6}" y="${py(yv) + 4}" text-anchor="end">${yv.toPrecision(3)}</text>`);
  }
  series.forEach((s, si) => {
    const color = COLORS[si % COLORS.length];
    const points = [...s.points].sort((a, b) => a.x - b.x);
    parts.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((p) => `${px(p.x)},${py(p.y)}`).join(' ')}"/>`,
    );
    for (const p of points) {
      parts.push(
        `<circle cx="${px(p.x)}" cy="${py(p.y)}" r="3.5" fill="${color}"><title>${escapeXml(`${s.label}${p.label ? ` ${p.label}` : ''}: x ${p.x.toPrecision(4)}, y ${p.y.toPrecision(4)}`)}</title></circle>`,
      );
      if (p.label)
        parts.push(
          `<text x="${px(p.x) + 5}" y="${py(p.y) - 5}" fill="${color}">${escapeXml(p.label)}</text>`,
        );
    }
    const y = top + plotH + 50 + si * 16;
    parts.push(`<rect x="${left}" y="${y - 9}" width="10" height="10" fill="${color}"/>`);
    parts.push(`<text x="${left + 14}" y="${y}">${escapeXml(s.label)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

/** The same data as bar-chart series (for reports that also keep `chart`). */
export function lineSeriesAsBars(series: readonly LineSeries[]): ChartSeries[] {
  return series.map((s) => ({
    label: s.label,
    values: s.points.map((p, i) => ({ category: p.label ?? String(i), value: p.y })),
  }));
}
