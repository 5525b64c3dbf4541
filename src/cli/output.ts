import { stringify } from "yaml";
import { CloudlessError } from "../api/errors.js";

export type OutputFormat = "table" | "json" | "yaml";

export function parseOutputFormat(value: string | undefined): OutputFormat {
  if (value === undefined || value === "table" || value === "wide") return "table";
  if (value === "json" || value === "yaml") return value;
  throw CloudlessError.invalid(`-o ${value}: unknown output format; use json, yaml or table`);
}

/** Prints rows as aligned columns, kubectl style, or the objects as JSON/YAML. */
export function printResult(
  format: OutputFormat,
  objects: unknown,
  table: { headers: string[]; rows: string[][] },
): void {
  if (format === "json") {
    process.stdout.write(`${JSON.stringify(objects, null, 2)}\n`);
    return;
  }
  if (format === "yaml") {
    process.stdout.write(stringify(objects));
    return;
  }
  process.stdout.write(renderTable(table.headers, table.rows));
}

export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...rows.map((row) => (row[column] ?? "").length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, column) =>
        column === cells.length - 1 ? cell : cell.padEnd((widths[column] ?? 0) + 3),
      )
      .join("")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n") + "\n";
}
