// reduct-js flows of issue 13 against a running appliance: lifecycles, query links, the
// $system bucket, entry patterns, #ctx/#select_labels, continuous queries, error messages.
// Usage: node flows.cjs <url> <token>. Prints one JSON object of observations (the Python
// test asserts on it); exits 1 with the error on an unexpected failure.
const { Client, LifecycleMode } = require("reduct-js");

const [url, token] = process.argv.slice(2);
const DAY_US = 86400n * 1000000n;

async function expectError(promise) {
  try {
    await promise;
    return { status: 0, message: "" };
  } catch (err) {
    return { status: err.status, message: err.message };
  }
}

async function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const client = new Client(url, { apiToken: token });
  const out = {};
  const bucket = await client.createBucket("js-data");
  const now = BigInt(Date.now()) * 1000n;

  // --- lifecycles
  for (const [entry, age] of [["cam/a", 10n], ["cam/b", 9n], ["mic", 10n]]) {
    const rec = await bucket.beginWrite(entry, { ts: now - age * DAY_US, labels: { k: "v" } });
    await rec.write("old");
  }
  await client.createLifecycle("js-life", {
    bucket: "js-data", entries: ["cam/*"], olderThan: "1d", interval: "1h",
  });
  out.lifecycleList = (await client.getLifecycleList()).map((l) => [l.name, l.isProvisioned, l.mode]);
  let cams = -1;
  for (let i = 0; i < 50; i++) {
    const info = await bucket.getEntryList();
    cams = info.filter((e) => e.name.startsWith("cam/")).reduce((n, e) => n + Number(e.recordCount), 0);
    if (cams === 0) break;
    await sleep(100);
  }
  out.camRecordsAfterRun = cams;
  out.micRecords = Number((await bucket.getEntryList()).find((e) => e.name === "mic").recordCount);
  const detail = await client.getLifecycle("js-life");
  out.lifecycleDetail = { olderThan: detail.settings.olderThan, entries: detail.settings.entries,
    lastRun: detail.info.lastRun !== undefined && detail.info.lastRun !== null };
  await client.setLifecycleMode("js-life", LifecycleMode.DRY_RUN);
  out.modeAfterPatch = (await client.getLifecycle("js-life")).info.mode;
  out.provisionedDelete = await expectError(client.deleteLifecycle("prov-life"));
  out.missingLifecycle = await expectError(client.getLifecycle("nope"));
  await client.deleteLifecycle("js-life");

  // --- query links
  const ts = now;
  await (await bucket.beginWrite("pics", { ts, contentType: "image/png" })).write("PNGDATA123");
  const link = await bucket.createQueryLink("pics", undefined, undefined, undefined,
    { entry: "pics", timestamp: ts });
  out.linkPrefix = link.split("/links/")[0];
  const resp = await fetch(link);
  out.linkStatus = resp.status;
  out.linkBody = await resp.text();
  const ranged = await fetch(link, { headers: { Range: "bytes=3-6" } });
  out.linkRange = [ranged.status, await ranged.text(), ranged.headers.get("content-range")];
  const tampered = await fetch(link.replace(/ct=([^&]{4})/, "ct=AAAA"));
  out.linkTampered = [tampered.status, tampered.headers.get("x-reduct-error")];

  // --- entry patterns, directives, continuous
  for (const [entry, i] of [["s/a/x", 1n], ["s/a/y", 2n], ["s/b/x", 3n], ["t", 4n]]) {
    await (await bucket.beginWrite(entry, { ts: i, labels: { hit: i === 3n ? "1" : "0", n: `${i}` } })).write("p");
  }
  const picked = [];
  for await (const r of bucket.query(["s/**", "!s/a/y"])) picked.push(r.entry);
  out.patternEntries = picked;
  const withCtx = [];
  for await (const r of bucket.query(["s/**", "t"], undefined, undefined, {
    when: { "&hit": { $eq: 1 }, "#ctx_before": 1, "#select_labels": ["n"] } })) {
    withCtx.push([r.entry, Number(r.time), r.labels]);
  }
  out.ctxRecords = withCtx;
  out.removedByPattern = await bucket.removeQuery(["s/a/*"], undefined, undefined, { when: {} });

  await (await bucket.beginWrite("live", { ts: 100n })).write("a");
  const seen = [];
  const sub = (async () => {
    for await (const r of bucket.query("live", undefined, undefined, { continuous: true, pollInterval: 0.1 })) {
      seen.push(Number(r.time));
      if (seen.length === 2) break;
    }
  })();
  await sleep(300);
  await (await bucket.beginWrite("live", { ts: 200n })).write("b");
  await Promise.race([sub, sleep(5000)]);
  out.continuous = seen;

  // --- $system
  await sleep(800); // flush interval of the test server is 0.3 s
  const system = await client.getBucket("$system");
  const audits = [];
  for await (const r of system.query(["audit/**"])) {
    audits.push(...JSON.parse((await r.read()).toString()).map((e) => e.path));
  }
  out.auditHasLifecycleCreate = audits.includes("/api/v1/lifecycles/js-life");
  out.systemRemove = await expectError(system.remove());
  out.listHasSystem = (await client.getBucketList()).some((b) => b.name === "$system");

  // --- error messages clients show
  const r405 = await fetch(`${url}/api/v1/info`, { method: "PUT", headers: { Authorization: `Bearer ${token}` } });
  out.methodNotAllowed = [r405.status, r405.headers.get("x-reduct-error")];
  await bucket.remove();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
