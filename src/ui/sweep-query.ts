/**
 * What the sweep page asks of a sweep's rows: the filter language
 * (`lr=0.1 accuracy>0.9 state=failed poly`), the order of a column, and how a
 * value is written. The server pages, filters and sorts a sweep with it; the
 * browser writes values with it, so both read a cell the same way. Plain
 * TypeScript: no Node and no DOM.
 */

export type CellValue = number | string | boolean;

/** What a row of the sweep holds, on either side. */
export interface QueryRow {
  id: string | null;
  state: string;
  params: Record<string, unknown>;
  metrics: Record<string, CellValue>;
}

export interface SweepSort {
  column: string;
  descending: boolean;
}

/** A value as the table shows it: numbers to 6 significant digits, other values as JSON. */
export function valueText(value: unknown): string {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** A column's value in a row: a param, a metric, the state or the job id. */
export function cellValue(row: QueryRow, column: string): unknown {
  if (column in row.params) return row.params[column];
  if (column in row.metrics) return row.metrics[column];
  if (column === "state") return row.state;
  if (column === "job") return row.id ?? undefined;
  return undefined;
}

function rowText(row: QueryRow): string {
  return [row.id ?? "", row.state, ...Object.values(row.params).map(valueText), ...Object.values(row.metrics).map(valueText)]
    .join(" ")
    .toLowerCase();
}

/** Rows whose `text` holds a `lr=0.1 acc>0.9 state=failed poly` filter: comparisons on columns; other words match any cell. */
export function parseFilter(text: string): (row: QueryRow) => boolean {
  const terms = text
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map((term) => {
      const match = /^([^<>=!]+)(<=|>=|!=|=|<|>)(.*)$/.exec(term);
      if (match === null) return (row: QueryRow) => rowText(row).includes(term.toLowerCase());
      const [, name = "", op, wanted = ""] = match;
      return (row: QueryRow) => {
        const value = cellValue(row, name);
        if (value === undefined) return false;
        const a = typeof value === "number" ? value : valueText(value);
        const b = typeof value === "number" && wanted !== "" && !Number.isNaN(Number(wanted)) ? Number(wanted) : wanted;
        switch (op) {
          case "=":
            return String(a) === String(b);
          case "!=":
            return String(a) !== String(b);
          case "<":
            return a < b;
          case ">":
            return a > b;
          case "<=":
            return a <= b;
          default:
            return a >= b;
        }
      };
    });
  return (row) => terms.every((term) => term(row));
}

// One collator for every comparison: `localeCompare` builds one per call, which a sort of 10,000 rows pays 100,000 times.
const collator = new Intl.Collator(undefined, { numeric: true });

/** Numbers by value, anything else by its text with digits read as numbers; a missing value after any other. */
export function compareCells(a: unknown, b: unknown): number {
  if (a === undefined) return b === undefined ? 0 : 1;
  if (b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return collator.compare(valueText(a), valueText(b));
}

/**
 * `rows` ordered by `sort` (a new array; ties keep their order). Rows without
 * the column's value come last in both directions.
 */
export function sortRows<Row extends QueryRow>(rows: readonly Row[], sort: SweepSort | undefined): Row[] {
  if (sort === undefined) return [...rows];
  const { column, descending } = sort;
  const keyed = rows.map((row) => ({ row, value: cellValue(row, column) }));
  keyed.sort((x, y) => {
    if (x.value === undefined || y.value === undefined) return compareCells(x.value, y.value);
    return descending ? compareCells(y.value, x.value) : compareCells(x.value, y.value);
  });
  return keyed.map(({ row }) => row);
}
