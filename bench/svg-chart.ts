// A dependency-free grouped bar chart, enough for bench reports.

export interface ChartSeries {
  readonly label: string;
  /** One value per category, in category order. */
  readonly values: readonly { readonly category: string; readonly value: number }[];
}

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948'];

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}

export function barChartSvg(title: string, unit: string, series: readonly ChartSeries[]): string {
  const categories = [...new Set(series.flatMap((s) => s.values.map((v) => v.category)))];
  const max = Math.max(1e-9, ...series.flatMap((s) => s.values.map((v) => v.value)));
  const barWidth = 14;
  const groupWidth = series.length * barWidth + 16;
  const plotHeight = 240;
  const left = 60;
  const top = 40;
  const width = left + categories.length * groupWidth + 20;
  const height = top + plotHeight + 110;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="20" font-size="14">${escapeXml(title)}</text>`,
    `<line x1="${left}" y1="${top + plotHeight}" x2="${width - 10}" y2="${top + plotHeight}" stroke="black"/>`,
    `<text x="10" y="${top + 10}">${escapeXml(unit)}</text>`,
  ];
  for (let tick = 0; tick <= 4; tick++) {
    const y = top + plotHeight - (tick / 4) * plotHeight;
    parts.push(
      `<text x="${left - 6}" y="${y + 4}" text-anchor="end">${((max * tick) / 4).toPrecision(3)}</text>`,
    );
    parts.push(`<line x1="${left}" y1="${y}" x2="${width - 10}" y2="${y}" stroke="#ddd"/>`);
  }
  categories.forEach((category, ci) => {
    const x0 = left + ci * groupWidth + 8;
    series.forEach((s, si) => {
      const value = s.values.find((v) => v.category === category)?.value ?? 0;
      const h = (value / max) * plotHeight;
      parts.push(
        `<rect x="${x0 + si * barWidth}" y="${top + plotHeight - h}" width="${barWidth - 2}" height="${h}" fill="${COLORS[si % COLORS.length]}"><title>${escapeXml(`${s.label} ${category}: ${value}`)}</title></rect>`,
      );
    });
    const cx = x0 + (series.length * barWidth) / 2;
    parts.push(
      `<text transform="translate(${cx},${top + plotHeight + 10}) rotate(60)">${escapeXml(category)}</text>`,
    );
  });
  series.forEach((s, si) => {
    const y = height - 14 - (series.length - 1 - si) * 14;
    parts.push(
      `<rect x="${left}" y="${y - 9}" width="10" height="10" fill="${COLORS[si % COLORS.length]}"/>`,
    );
    parts.push(`<text x="${left + 14}" y="${y}">${escapeXml(s.label)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
