/**
 * The dashboard in the browser: plain DOM, a hash router, the JSON API, one
 * event stream for live updates, and uPlot for the charts.
 *
 *   #/runs              runs, newest first, and the pipelines
 *   #/runs/ID           the jobs of one run
 *   #/pipelines/NAME    the pipeline's sweep: table, params against a metric, step curves
 *   #/jobs/ID           one job: params, metrics, keys, outputs, curves, live log
 *   #/environments      the environment builds and their logs
 */
import uPlot from "uplot";
import { valueText, type SweepSort } from "../sweep-query.js";

type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";
type MetricValue = number | string | boolean;

interface Job {
  id: string;
  runId: string;
  stack: string;
  pipeline: string;
  stage: string;
  state: JobState;
  params: Record<string, unknown>;
  sweepIndex: number | null;
  sweepSize: number | null;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
  reason: string | null;
  createdAt: string;
  collectedAt: string | null;
}

/** One combination of the sweep's grid and the job last recorded for it (none while pending). */
interface SweepRow {
  index: number;
  key: string | null;
  id: string | null;
  runId: string | null;
  state: JobState | "pending";
  params: Record<string, unknown>;
  metrics: Record<string, MetricValue>;
  finishedAt: string | null;
  collectedAt: string | null;
}

/** One page of a sweep, filtered and sorted by the server. */
interface SweepPage {
  pipeline: string;
  source: "config" | "run";
  metricNames: string[];
  paramNames: string[];
  leadingMetric: string | null;
  total: number;
  matched: number;
  offset: number;
  items: SweepRow[];
}

/** The sweep's chart: a param (`xs`) against a metric (`ys`), one point per row the filter keeps. */
interface SweepPoints {
  xs: unknown[];
  ys: number[];
}

interface JobDetail extends Job {
  metrics: Record<string, MetricValue>;
  keys: Record<string, string | null>;
  metricsSkipped: { file: string; key?: string; reason: string }[];
  outputDir: string;
  outputs: { path: string; size: number }[];
  logFile: string;
}

interface Run {
  id: string;
  stack: string;
  command: string;
  startedAt: string;
  finishedAt: string | null;
  state: string;
  jobs: Partial<Record<JobState, number>>;
  pipelines: string[];
}

interface Page<T> {
  items: T[];
  next: string | null;
}

interface Series {
  id: string;
  series: Record<string, { step: number; value: number }[]>;
  /** Per field thinned out for the chart, how many points its files hold. */
  totals?: Record<string, number>;
}

interface Overview {
  root: string;
  configError: string | null;
  pipelines: { name: string; jobs: Partial<Record<JobState, number>>; total: number; builds: number }[];
}

// ------------------------------------------------------------------ DOM and data helpers

type Child = Node | string | number | null | undefined | false;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number | boolean | EventListener | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") element.addEventListener(name.replace(/^on/, ""), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(typeof child === "object" ? child : String(child));
  }
  return element;
}

async function get<T>(path: string): Promise<T> {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = (await response.json()) as T & { error?: string };
  if (!response.ok) throw new Error(body.error ?? `${response.status} ${response.statusText}`);
  return body;
}

function stateBadge(state: string): HTMLElement {
  return h("span", { class: `state state-${state}`, "data-state": state }, state);
}

function when(iso: string | null): string {
  return iso === null ? "" : iso.replace("T", " ").slice(0, 19);
}

function duration(job: { startedAt: string | null; finishedAt: string | null }): string {
  if (job.startedAt === null) return "";
  const ms = (job.finishedAt === null ? Date.now() : Date.parse(job.finishedAt)) - Date.parse(job.startedAt);
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60
    ? `${s}s`
    : s < 3600
      ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`
      : `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

function jobLink(id: string): HTMLElement {
  return h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono" }, id);
}

function countsText(counts: Partial<Record<JobState, number>>): HTMLElement {
  const span = h("span");
  for (const state of ["running", "queued", "succeeded", "failed", "cancelled"] as const) {
    const n = counts[state];
    if (n) span.append(h("span", { class: `state-${state}` }, `${n} ${state}`), " ");
  }
  return span;
}

// ------------------------------------------------------------------ live updates

type JobsListener = (jobs: Job[]) => void;
const jobsListeners = new Set<JobsListener>();
let stream: EventSource | undefined;
/** What the followed job's events go to, while a job page is shown. */
let followed: Partial<Record<"log" | "series" | "metrics", (data: unknown) => void>> = {};

/**
 * One event stream for the whole tab, following a job (`?job=ID`) while its
 * page is shown: a browser opens at most six connections to a host, shared by
 * every tab, and each stream holds one for as long as it is open.
 */
function connectLive(query = ""): void {
  stream?.close();
  const live = document.getElementById("live")!;
  const source = new EventSource(`/api/events${query}`);
  stream = source;
  let lost = false;
  source.addEventListener("open", () => {
    live.textContent = "live";
    live.classList.add("on");
    // What changed while the stream was down (a dashboard restarted, a job that ended meanwhile) was never sent.
    if (lost) void show();
    lost = false;
  });
  source.addEventListener("error", () => {
    lost = true;
    live.textContent = "reconnecting";
    live.classList.remove("on");
  });
  source.addEventListener("jobs", (event) => {
    const jobs = JSON.parse((event as MessageEvent<string>).data) as Job[];
    for (const listener of jobsListeners) listener(jobs);
  });
  for (const name of ["log", "series", "metrics"] as const) {
    source.addEventListener(name, (event) => followed[name]?.(JSON.parse((event as MessageEvent<string>).data)));
  }
  // The store was removed or replaced: nothing the page shows holds any more.
  source.addEventListener("reset", () => void show());
}

/** Follows a job's log from `logOffset`, its step series and metrics; returns how to stop. */
function followJob(id: string, logOffset: number, handlers: typeof followed): () => void {
  followed = handlers;
  connectLive(`?job=${encodeURIComponent(id)}&logOffset=${logOffset}`);
  return () => {
    followed = {};
    connectLive();
  };
}

/** Calls `fn` at most once per `ms`, with the latest call's effect. */
function throttle(fn: () => void, ms: number): () => void {
  let timer: number | undefined;
  return () => {
    if (timer !== undefined) return;
    timer = window.setTimeout(() => {
      timer = undefined;
      fn();
    }, ms);
  };
}

// ------------------------------------------------------------------ views

interface View {
  render(main: HTMLElement): Promise<void>;
  dispose?(): void;
}

/** A table of `T` rows filled page by page with a "more" button. */
function pagedTable<T>(
  header: string[],
  rowOf: (item: T) => HTMLTableRowElement,
  load: (cursor: string | null) => Promise<Page<T>>,
): { element: HTMLElement; reload(): Promise<void> } {
  const body = h("tbody");
  const more = h("button", { class: "more", type: "button" }, "more");
  const element = h("div", {}, h("table", {}, h("thead", {}, h("tr", {}, ...header.map((name) => h("th", {}, name)))), body), more);
  let next: string | null = null;
  let shown = 0;
  let reloads = 0;
  const append = async (cursor: string | null) => {
    const page = await load(cursor);
    for (const item of page.items) body.append(rowOf(item));
    shown += page.items.length;
    next = page.next;
    more.hidden = next === null;
  };
  more.addEventListener("click", () => void append(next));
  return {
    element,
    // The first page again, and as many more rows as were shown: live updates keep the view where it was.
    async reload() {
      const asked = ++reloads;
      const keep = Math.max(shown, 1);
      const fresh = h("tbody");
      let cursor: string | null = null;
      let count = 0;
      do {
        const page = await load(cursor);
        for (const item of page.items) fresh.append(rowOf(item));
        count += page.items.length;
        cursor = page.next;
      } while (cursor !== null && count < keep);
      if (asked !== reloads) return;
      body.replaceChildren(...fresh.childNodes);
      shown = count;
      next = cursor;
      more.hidden = next === null;
    },
  };
}

function runsView(): View {
  let listener: JobsListener | undefined;
  let disposed = false;
  return {
    async render(main) {
      const overview = await get<Overview>("/api/overview");
      const pipelines = h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "pipeline"), h("th", {}, "train jobs"), h("th", {}, "by state"))),
        h(
          "tbody",
          {},
          ...overview.pipelines.map((p) =>
            h(
              "tr",
              {},
              h("td", {}, h("a", { href: `#/pipelines/${encodeURIComponent(p.name)}` }, p.name)),
              h("td", { class: "num" }, p.total),
              h("td", {}, countsText(p.jobs)),
            ),
          ),
        ),
      );
      const runs = pagedTable<Run>(
        ["run", "stack", "command", "started", "state", "jobs", "pipelines"],
        (run) =>
          h(
            "tr",
            { "data-run": run.id },
            h("td", {}, h("a", { href: `#/runs/${run.id}`, class: "mono" }, run.id)),
            h("td", {}, run.stack),
            h("td", {}, run.command),
            h("td", {}, when(run.startedAt)),
            h("td", {}, stateBadge(run.state)),
            h("td", {}, countsText(run.jobs)),
            h("td", {}, run.pipelines.join(", ")),
          ),
        (cursor) => get<Page<Run>>(`/api/runs?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`),
      );
      main.replaceChildren(
        h("h1", {}, "Runs"),
        h(
          "section",
          { class: "card" },
          h("h2", {}, "Pipelines"),
          overview.configError ? h("p", { class: "error", id: "config-error" }, overview.configError) : null,
          overview.pipelines.length ? pipelines : h("p", { class: "muted" }, "no pipelines yet"),
        ),
        h("section", { class: "card", id: "runs" }, runs.element),
      );
      await runs.reload();
      if (disposed) return;
      listener = throttle(() => void runs.reload(), 500);
      jobsListeners.add(listener);
    },
    dispose() {
      disposed = true;
      if (listener) jobsListeners.delete(listener);
    },
  };
}

function jobRow(job: Job): HTMLTableRowElement {
  return h(
    "tr",
    { "data-job": job.id },
    h("td", {}, jobLink(job.id)),
    h("td", {}, job.pipeline),
    h("td", {}, job.stage),
    h("td", {}, stateBadge(job.state)),
    h("td", {}, job.sweepIndex !== null && job.sweepSize !== null ? `${job.sweepIndex + 1}/${job.sweepSize}` : ""),
    h("td", {}, when(job.startedAt)),
    h("td", {}, duration(job)),
    h(
      "td",
      { class: "mono" },
      Object.entries(job.params)
        .map(([k, v]) => `${k}=${valueText(v)}`)
        .join(" "),
    ),
  );
}

const JOB_HEADER = ["job", "pipeline", "stage", "state", "n/N", "started", "duration", "params"];

function jobListView(title: string, query: string): View {
  let listener: JobsListener | undefined;
  let disposed = false;
  return {
    async render(main) {
      const table = pagedTable<Job>(JOB_HEADER, jobRow, (cursor) =>
        get<Page<Job>>(`/api/jobs?${query}&limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`),
      );
      main.replaceChildren(h("h1", {}, title), h("section", { class: "card" }, table.element));
      await table.reload();
      if (disposed) return;
      listener = throttle(() => void table.reload(), 500);
      jobsListeners.add(listener);
    },
    dispose() {
      disposed = true;
      if (listener) jobsListeners.delete(listener);
    },
  };
}

// ------------------------------------------------------------------ charts

const PALETTE = ["#3559e0", "#e0543a", "#16a34a", "#a855f7", "#f59e0b", "#0891b2", "#db2777", "#65a30d", "#7c3aed", "#ea580c"];

function chartWidth(container: HTMLElement): number {
  return Math.max(320, container.clientWidth - 8);
}

/** Lines of `field` over steps, one per job. */
function curvesChart(container: HTMLElement, all: Series[], field: string, label: (id: string) => string): uPlot | undefined {
  const tables: uPlot.AlignedData[] = [];
  const series: uPlot.Series[] = [{ label: "step" }];
  all.forEach((item, index) => {
    const points = item.series[field];
    if (!points || points.length === 0) return;
    const sorted = [...points].sort((a, b) => a.step - b.step);
    tables.push([sorted.map((p) => p.step), sorted.map((p) => p.value)]);
    series.push({ label: label(item.id), stroke: PALETTE[index % PALETTE.length], width: 2, spanGaps: true });
  });
  container.replaceChildren();
  if (tables.length === 0) {
    container.append(h("p", { class: "muted" }, `no step series "${field}" recorded`));
    return undefined;
  }
  const data = tables.length === 1 ? tables[0]! : uPlot.join(tables);
  const chart = new uPlot(
    { title: field, width: chartWidth(container), height: 280, scales: { x: { time: false } }, series, axes: [{ label: "step" }, {}] },
    data,
    container,
  );
  // A long run's series is thinned on the server: say so rather than pass the curve off as every step.
  for (const item of all) {
    const total = item.totals?.[field];
    const shown = item.series[field]?.length;
    if (total === undefined || shown === undefined) continue;
    const whose = all.length > 1 ? `${label(item.id)}: ` : "";
    container.append(
      h(
        "p",
        { class: "muted thinned" },
        `${whose}${shown.toLocaleString("en")} of ${total.toLocaleString("en")} points shown, evenly spread, with the last`,
      ),
    );
  }
  return chart;
}

/** The x range of points sorted by x. */
function xRange(xs: number[], categories: number): uPlot.Range.MinMax {
  if (categories > 0) return [-0.5, categories - 0.5];
  const min = xs[0] ?? 0;
  const max = xs[xs.length - 1] ?? 0;
  const pad = max > min ? (max - min) * 0.05 : Math.abs(min) * 0.1 || 1;
  return [min - pad, max + pad];
}

/** The chart's columns, by x: text params are placed by their sorted values. */
function scatterData(points: SweepPoints): { x: number[]; y: number[]; categories: string[] } {
  const categories = [...new Set(points.xs.filter((v) => typeof v !== "number").map(valueText))].sort();
  const index = new Map(categories.map((name, i) => [name, i]));
  const pairs = points.xs
    .map((v, i) => ({ x: typeof v === "number" ? v : (index.get(valueText(v)) ?? -1), y: points.ys[i]! }))
    .filter((p) => p.x >= 0)
    .sort((a, b) => a.x - b.x);
  return { x: pairs.map((p) => p.x), y: pairs.map((p) => p.y), categories };
}

/** Each job as a point: a param (x) against a metric (y). */
function scatterChart(container: HTMLElement, data: ReturnType<typeof scatterData>, param: string, metric: string): uPlot | undefined {
  const { categories } = data;
  container.replaceChildren();
  if (data.x.length === 0) {
    container.append(h("p", { class: "muted" }, `no job has both ${param} and a numeric ${metric}`));
    return undefined;
  }
  const axisValues = categories.length > 0 ? (_u: uPlot, splits: number[]) => splits.map((s) => categories[s] ?? "") : undefined;
  return new uPlot(
    {
      title: `${metric} by ${param}`,
      width: chartWidth(container),
      height: 280,
      // An explicit x range, wider than the points: uPlot looks up the first and last point by x, which misses repeated x values at the ends.
      scales: {
        x: {
          time: false,
          range: xRange(data.x, categories.length),
        },
      },
      series: [
        { label: param },
        { label: metric, stroke: PALETTE[0], paths: () => null, points: { show: true, size: 9, fill: PALETTE[0] } },
      ],
      axes: [{ label: param, ...(axisValues ? { values: axisValues, splits: () => categories.map((_, i) => i) } : {}) }, { label: metric }],
    },
    [data.x, data.y],
    container,
  );
}

// ------------------------------------------------------------------ the sweep

/** Rows of the sweep table a page shows: the server filters, sorts and pages the whole sweep. */
const SWEEP_PAGE = 50;

/** The sweep page's address: `#/pipelines/NAME?page=2&sort=score&order=desc&filter=lr%3D0.1`, so a reload shows the same view. */
interface SweepAddress {
  page: number;
  sort: SweepSort | undefined;
  filter: string;
}

function sweepAddress(query: URLSearchParams): SweepAddress {
  const page = Number(query.get("page") ?? "1");
  const column = query.get("sort");
  return {
    page: Number.isSafeInteger(page) && page >= 1 ? page : 1,
    sort: column ? { column, descending: query.get("order") === "desc" } : undefined,
    filter: query.get("filter") ?? "",
  };
}

function sweepQuery(address: SweepAddress): URLSearchParams {
  const query = new URLSearchParams();
  if (address.page > 1) query.set("page", String(address.page));
  if (address.sort !== undefined) {
    query.set("sort", address.sort.column);
    query.set("order", address.sort.descending ? "desc" : "asc");
  }
  if (address.filter !== "") query.set("filter", address.filter);
  return query;
}

function sweepView(pipeline: string, query: URLSearchParams): View {
  let listener: JobsListener | undefined;
  let disposed = false;
  const charts: uPlot[] = [];
  return {
    async render(main) {
      const address = sweepAddress(query);
      const selected = new Set<string>();
      const filterInput = h("input", { type: "search", id: "filter", placeholder: "filter: lr=0.1 accuracy>0.9 state=succeeded" });
      filterInput.value = address.filter;
      const count = h("span", { class: "muted", id: "shown" });
      const note = h("p", { class: "muted" });
      const head = h("thead");
      const body = h("tbody");
      const table = h("table", { id: "sweep" }, head, body);
      const pageButton = (id: string, label: string, to: () => number) =>
        h("button", { type: "button", id, class: "pager", onclick: () => void goTo(to()) }, label);
      const pageInfo = h("span", { class: "muted", id: "page-info" });
      const first = pageButton("page-first", "«", () => 1);
      const previous = pageButton("page-prev", "‹ previous", () => address.page - 1);
      const next = pageButton("page-next", "next ›", () => address.page + 1);
      const last = pageButton("page-last", "»", () => pages);
      const paramSelect = h("select", { id: "x-param" });
      const metricSelect = h("select", { id: "y-metric" });
      const fieldSelect = h("select", { id: "curve-field" });
      const scatter = h("div", { class: "chart", id: "scatter" });
      const curves = h("div", { class: "chart", id: "curves" });
      main.replaceChildren(
        h("h1", {}, `Sweep of ${pipeline}`),
        note,
        h(
          "section",
          { class: "card" },
          h("div", { class: "toolbar" }, filterInput, count),
          table,
          h("div", { class: "toolbar", id: "pager" }, first, previous, pageInfo, next, last),
        ),
        h(
          "section",
          { class: "card" },
          h(
            "div",
            { class: "toolbar" },
            "param ",
            paramSelect,
            " against metric ",
            metricSelect,
            " · step curves of the selected jobs: ",
            fieldSelect,
          ),
          h("div", { class: "charts" }, scatter, curves),
        ),
      );

      let pages = 1;
      let shown: SweepRow[] = [];
      /** What each row drawn shows: a row whose content is the same is left as it is. */
      let drawn: { text: string; tr: HTMLTableRowElement }[] = [];
      let columns = "";
      const setOptions = (select: HTMLSelectElement, names: string[]) => {
        if ([...select.options].map((o) => o.value).join("\n") === names.join("\n")) return;
        const current = select.value;
        select.replaceChildren(...names.map((name) => h("option", { value: name }, name)));
        if (names.includes(current)) select.value = current;
      };
      const rowOf = (row: SweepRow, params: string[], metrics: string[]) => {
        const id = row.id;
        const box = h("input", { type: "checkbox", "aria-label": `select ${id ?? "pending"}`, disabled: id === null });
        box.checked = id !== null && selected.has(id);
        const tr = h(
          "tr",
          { "data-job": id ?? undefined, "data-index": row.index, class: box.checked ? "selected" : undefined },
          h("td", {}, box),
          h("td", {}, id === null ? h("span", { class: "muted" }, "not run") : jobLink(id)),
          h("td", {}, stateBadge(row.state)),
          ...params.map((p) => h("td", { class: typeof row.params[p] === "number" ? "num" : "" }, valueText(row.params[p]))),
          ...metrics.map((m) => h("td", { class: "num", "data-metric": m }, valueText(row.metrics[m]))),
        );
        box.addEventListener("change", () => {
          if (id === null) return;
          if (box.checked) selected.add(id);
          else selected.delete(id);
          tr.classList.toggle("selected", box.checked);
          void drawCurves();
        });
        return tr;
      };
      const drawHead = (params: string[], metrics: string[]) => {
        const header = (column: string) => {
          const sort = address.sort;
          const cls = sort?.column === column ? `sortable sorted-${sort.descending ? "desc" : "asc"}` : "sortable";
          return h(
            "th",
            {
              class: cls,
              "data-column": column,
              onclick: () => {
                // A metric sorts best first: highest first, as `kaos train info -s` does; a second click turns it round.
                address.sort =
                  sort?.column === column ? { column, descending: !sort.descending } : { column, descending: metrics.includes(column) };
                address.page = 1;
                void load({ chart: false });
              },
            },
            column,
          );
        };
        head.replaceChildren(
          h("tr", {}, h("th", {}, ""), header("job"), header("state"), ...params.map((p) => header(p)), ...metrics.map((m) => header(m))),
        );
      };
      // Only rows whose content changed are drawn again: a live update during a run touches the jobs that moved.
      const drawRows = (rows: SweepRow[], params: string[], metrics: string[], columnsChanged: boolean) => {
        const next = rows.map((row, position) => {
          const text = JSON.stringify(row);
          const old = drawn[position];
          if (!columnsChanged && old !== undefined && old.text === text) return old;
          const tr = rowOf(row, params, metrics);
          if (old !== undefined) old.tr.replaceWith(tr);
          else body.append(tr);
          return { text, tr };
        });
        for (const gone of drawn.slice(rows.length)) gone.tr.remove();
        drawn = next;
      };
      const writeAddress = () => {
        const search = sweepQuery(address).toString();
        const hash = `#/pipelines/${encodeURIComponent(pipeline)}${search ? `?${search}` : ""}`;
        if (location.hash !== hash) history.replaceState(history.state, "", hash);
      };
      const goTo = async (page: number) => {
        address.page = Math.min(Math.max(1, page), pages);
        await load({ chart: false });
      };

      let loads = 0;
      /** Asks for the page the address names and draws it; `chart` also redraws the chart, for a new filter or a live update. */
      const load = async (options: { chart: boolean }) => {
        const asked = ++loads;
        const api = new URLSearchParams(sweepQuery(address));
        api.delete("page");
        api.set("limit", String(SWEEP_PAGE));
        api.set("offset", String((address.page - 1) * SWEEP_PAGE));
        const page = await get<SweepPage>(`/api/pipelines/${encodeURIComponent(pipeline)}/sweep?${api}`);
        if (asked !== loads || disposed) return;
        note.textContent =
          page.source === "config"
            ? "every combination the config names now, with the job last recorded for it"
            : "not in the config: the jobs of its last run";
        pages = Math.max(1, Math.ceil(page.matched / SWEEP_PAGE));
        address.page = Math.floor(page.offset / SWEEP_PAGE) + 1;
        count.textContent = `${page.matched} of ${page.total} jobs`;
        pageInfo.textContent =
          page.matched === 0
            ? "no rows"
            : `rows ${page.offset + 1}–${page.offset + page.items.length} of ${page.matched} · page ${address.page} of ${pages}`;
        first.disabled = previous.disabled = address.page <= 1;
        next.disabled = last.disabled = address.page >= pages;
        const names = `${page.paramNames.join("\n")}\n\n${page.metricNames.join("\n")}\n\n${address.sort?.column}:${address.sort?.descending}`;
        const columnsChanged = names !== columns;
        columns = names;
        if (columnsChanged) drawHead(page.paramNames, page.metricNames);
        shown = page.items;
        drawRows(page.items, page.paramNames, page.metricNames, columnsChanged);
        writeAddress();
        const firstLoad = metricSelect.options.length === 0;
        setOptions(paramSelect, page.paramNames);
        setOptions(metricSelect, page.metricNames);
        if (firstLoad && page.leadingMetric !== null) metricSelect.value = page.leadingMetric;
        if (options.chart || firstLoad) await drawScatter();
        else if (selected.size === 0) void drawCurves();
      };

      let scatterAsked = 0;
      let scatterOf = "";
      const drawScatter = async () => {
        const asked = ++scatterAsked;
        const x = paramSelect.value;
        const y = metricSelect.value;
        if (x && y) {
          const query = new URLSearchParams({ x, y, filter: address.filter });
          const points = await get<SweepPoints>(`/api/pipelines/${encodeURIComponent(pipeline)}/points?${query}`);
          if (asked !== scatterAsked || disposed) return;
          const chart = charts[0];
          const data = scatterData(points);
          // New points of the same chart are drawn into it: a chart of 10,000 points is not built again on every job that ends.
          const of = `${x}\n${y}\n${data.categories.join("\n")}`;
          if (chart !== undefined && of === scatterOf && data.x.length > 0) chart.setData([data.x, data.y]);
          else {
            for (const old of charts.splice(0)) old.destroy();
            const made = scatterChart(scatter, data, x, y);
            if (made) charts.push(made);
          }
          scatterOf = of;
        } else {
          for (const old of charts.splice(0)) old.destroy();
        }
        void drawCurves();
      };
      let curvesChartNow: uPlot | undefined;
      // Only the latest request draws: ticking boxes quickly sends several, whose answers may come back in any order.
      let curvesAsked = 0;
      const drawCurves = async () => {
        const asked = ++curvesAsked;
        const ids =
          selected.size > 0
            ? [...selected]
            : shown
                .slice(0, 10)
                .map((row) => row.id)
                .filter((id) => id !== null);
        if (ids.length === 0) return;
        const { items } = await get<{ items: Series[] }>(`/api/series?ids=${ids.join(",")}`);
        if (asked !== curvesAsked) return;
        setOptions(fieldSelect, [...new Set(items.flatMap((item) => Object.keys(item.series)))].sort());
        curvesChartNow?.destroy();
        curvesChartNow = fieldSelect.value ? curvesChart(curves, items, fieldSelect.value, (id) => id) : undefined;
        if (!fieldSelect.value) curves.replaceChildren(h("p", { class: "muted" }, "no step series recorded (OUT/metrics/*.jsonl)"));
      };
      filterInput.addEventListener("input", () => {
        address.filter = filterInput.value;
        address.page = 1;
        void load({ chart: true });
      });
      paramSelect.addEventListener("change", () => void drawScatter());
      metricSelect.addEventListener("change", () => void drawScatter());
      fieldSelect.addEventListener("change", () => void drawCurves());
      await load({ chart: true });
      if (disposed) return;
      const reload = throttle(() => void load({ chart: true }), 500);
      listener = (jobs) => {
        if (jobs.some((job) => job.pipeline === pipeline && job.stage === "train")) reload();
      };
      jobsListeners.add(listener);
    },
    dispose() {
      disposed = true;
      if (listener) jobsListeners.delete(listener);
      for (const chart of charts.splice(0)) chart.destroy();
    },
  };
}

// ------------------------------------------------------------------ one job

/** The most of a log a job page holds: appending megabytes a job prints would leave the page too slow to use. */
const LOG_SHOWN_CHARS = 1 << 20;

function jobView(id: string): View {
  let unfollow: (() => void) | undefined;
  let listener: JobsListener | undefined;
  let chart: uPlot | undefined;
  let disposed = false;
  return {
    async render(main) {
      const job = await get<JobDetail>(`/api/jobs/${encodeURIComponent(id)}`);
      const log = await get<{ offset: number; next: number; text: string }>(`/api/jobs/${encodeURIComponent(job.id)}/log?tail=1`);
      const state = h("span", { id: "job-state" }, stateBadge(job.state));
      const timing = h("span", { class: "muted", id: "job-timing" });
      const metrics = h("tbody", { id: "metrics" });
      const pre = h("pre", { class: "log", id: "log" });
      const earlier = h("p", { class: "muted", id: "log-earlier" });
      const showEarlier = (offset: number) => {
        earlier.hidden = offset === 0;
        earlier.replaceChildren(`the first ${offset} bytes are not shown: `, h("code", {}, job.logFile));
      };
      // The pieces shown, each with where it starts in the file: the oldest go once the page holds too much.
      const pieces: { node: Text; offset: number }[] = [];
      let shownChars = 0;
      const appendLog = (text: string, offset: number) => {
        const node = document.createTextNode(text);
        pre.append(node);
        pieces.push({ node, offset });
        shownChars += text.length;
        while (shownChars > LOG_SHOWN_CHARS && pieces.length > 1) {
          const oldest = pieces.shift()!;
          oldest.node.remove();
          shownChars -= oldest.node.length;
          showEarlier(pieces[0]!.offset);
        }
      };
      appendLog(log.text, log.offset);
      showEarlier(log.offset);
      const fieldSelect = h("select", { id: "job-curve-field" });
      const curves = h("div", { class: "chart", id: "job-curves" });
      let series: Series = { id: job.id, series: {} };
      const showTiming = (j: Job) => {
        timing.textContent = `started ${when(j.startedAt) || "-"} · finished ${when(j.finishedAt) || "-"} · ${duration(j) || "-"}${j.exitCode !== null ? ` · exit ${j.exitCode}` : ""}${j.reason ? ` · ${j.reason}` : ""}`;
      };
      const showMetrics = (values: Record<string, MetricValue>) => {
        const entries = Object.entries(values);
        metrics.replaceChildren(
          ...(entries.length === 0
            ? [h("tr", {}, h("td", { class: "muted" }, "none yet"))]
            : entries.map(([name, value]) =>
                h("tr", { "data-metric": name }, h("td", {}, name), h("td", { class: "num" }, valueText(value))),
              )),
        );
      };
      const drawCurves = () => {
        const fields = Object.keys(series.series).sort();
        const current = fieldSelect.value;
        fieldSelect.replaceChildren(...fields.map((f) => h("option", { value: f }, f)));
        if (fields.includes(current)) fieldSelect.value = current;
        chart?.destroy();
        chart = fieldSelect.value ? curvesChart(curves, [series], fieldSelect.value, () => fieldSelect.value) : undefined;
        if (!fieldSelect.value) curves.replaceChildren(h("p", { class: "muted" }, "no step series recorded (OUT/metrics/*.jsonl)"));
      };
      fieldSelect.addEventListener("change", drawCurves);
      showTiming(job);
      showMetrics(job.metrics);
      const kv = (pairs: [string, Child][]) => h("dl", { class: "kv" }, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
      main.replaceChildren(
        h("h1", {}, "Job ", h("span", { class: "mono" }, job.id), " ", state),
        h(
          "section",
          { class: "card" },
          kv([
            ["pipeline", h("a", { href: `#/pipelines/${encodeURIComponent(job.pipeline)}` }, job.pipeline)],
            ["stage", job.stage],
            ["run", h("a", { href: `#/runs/${job.runId}`, class: "mono" }, job.runId)],
            ["sweep", job.sweepIndex !== null && job.sweepSize !== null ? `${job.sweepIndex + 1} of ${job.sweepSize}` : "-"],
            ["when", timing],
          ]),
        ),
        h(
          "div",
          { class: "charts" },
          h(
            "section",
            { class: "card" },
            h("h2", {}, "Params"),
            h(
              "table",
              { id: "params" },
              h(
                "tbody",
                {},
                ...Object.entries(job.params).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "mono" }, valueText(v)))),
              ),
            ),
            h("h2", {}, "Metrics"),
            h("table", {}, metrics),
            ...job.metricsSkipped.map((s) => h("p", { class: "muted" }, `skipped ${s.file}${s.key ? ` ${s.key}` : ""}: ${s.reason}`)),
          ),
          h("section", { class: "card" }, h("h2", {}, "Step curves ", fieldSelect), curves),
        ),
        h(
          "section",
          { class: "card" },
          h("h2", {}, "Keys"),
          kv(Object.entries(job.keys).map(([k, v]) => [k, h("span", { class: "mono" }, v ?? "-")])),
          h("h2", {}, "Outputs"),
          h("p", { class: "mono muted" }, job.collectedAt ? `collected by kaos gc at ${job.collectedAt}` : job.outputDir),
          h(
            "table",
            {},
            h("tbody", {}, ...job.outputs.map((o) => h("tr", {}, h("td", { class: "mono" }, o.path), h("td", { class: "num" }, o.size)))),
          ),
        ),
        h("section", { class: "card" }, h("h2", {}, "Log"), earlier, pre),
      );
      series = await get<Series>(`/api/jobs/${encodeURIComponent(job.id)}/series`);
      drawCurves();
      if (disposed) return;
      listener = (jobs) => {
        const update = jobs.find((j) => j.id === job.id);
        if (update === undefined) return;
        state.replaceChildren(stateBadge(update.state));
        showTiming(update);
      };
      jobsListeners.add(listener);
      unfollow = followJob(job.id, log.next, {
        log: (data) => {
          const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          const piece = data as { offset: number; text: string };
          appendLog(piece.text, piece.offset);
          if (atBottom) pre.scrollTop = pre.scrollHeight;
        },
        series: (data) => {
          series = data as Series;
          drawCurves();
        },
        metrics: (data) => showMetrics((data as { metrics: Record<string, MetricValue> }).metrics),
      });
    },
    dispose() {
      disposed = true;
      unfollow?.();
      if (listener) jobsListeners.delete(listener);
      chart?.destroy();
    },
  };
}

// ------------------------------------------------------------------ routing

let current: View | undefined;

function route(): View {
  const hash = location.hash.replace(/^#/, "");
  const mark = hash.indexOf("?");
  const query = new URLSearchParams(mark < 0 ? "" : hash.slice(mark + 1));
  const [, kind, name] = (mark < 0 ? hash : hash.slice(0, mark)).split("/").map(decodeURIComponent);
  if (kind === "runs" && name) return jobListView(`Run ${name}`, `run=${encodeURIComponent(name)}`);
  if (kind === "pipelines" && name) return sweepView(name, query);
  if (kind === "jobs" && name) return jobView(name);
  if (kind === "environments") return jobListView("Environment builds", "stage=build");
  return runsView();
}

async function show(): Promise<void> {
  current?.dispose?.();
  const main = document.getElementById("main")!;
  const kind = location.hash.split("/")[1] ?? "runs";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.getAttribute("data-kind") === kind);
  const view = route();
  current = view;
  // Each view draws in its own element: one left before it finished loading goes on drawing out of sight.
  const root = h("div", { class: "view" });
  main.replaceChildren(root);
  main.setAttribute("aria-busy", "true");
  try {
    await view.render(root);
  } catch (error) {
    root.replaceChildren(h("p", { class: "error" }, error instanceof Error ? error.message : String(error)));
  } finally {
    if (current === view) main.removeAttribute("aria-busy");
  }
}

document
  .getElementById("nav")!
  .append(
    h("a", { href: "#/runs", "data-kind": "runs" }, "Runs"),
    h("a", { href: "#/environments", "data-kind": "environments" }, "Environments"),
  );
window.addEventListener("hashchange", () => void show());
connectLive();
void show();
