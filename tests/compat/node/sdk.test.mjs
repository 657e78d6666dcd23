// The official OpenAI Node SDK through the gateway. Run by tests/compat/test_node_sdk.py,
// which passes the gateway's base URL, the mock's URL and the tokens in the environment.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import OpenAI, { toFile } from "openai";

const env = process.env;
const baseURL = env.GATEWAY_BASE_URL;
const mock = env.MOCK_URL;

const client = (opts = {}) =>
  new OpenAI({ baseURL, apiKey: env.CLIENT_KEY, defaultQuery: { token: env.GW_TOKEN }, ...opts });

async function mockRequests() {
  return (await fetch(`${mock}/_mock/requests`)).json();
}
const headerOf = (req, name) => Object.fromEntries(req.headers)[name];

test("models list", async () => {
  const models = await client().models.list();
  assert.deepEqual(models.data.map((m) => m.id), ["gpt-4o-mini"]);
  const last = (await mockRequests()).at(-1);
  assert.equal(last.target, "/v1/models");
  assert.equal(headerOf(last, "authorization"), `Bearer ${env.CLIENT_KEY}`);
});

test("chat completion", async () => {
  const r = await client().chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] });
  assert.equal(r.choices[0].message.content, "Hello from the mock!");
});

test("chat completion streams token by token", async () => {
  // Each chunk after the first is sent only once this test holds the one
  // before (the mock's `?step=1`): through a buffering gateway the first
  // never comes, and the SDK's timeout fails the test.
  const stream = await client({ timeout: 20000, maxRetries: 0 }).chat.completions.create(
    { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], stream: true },
    { query: { step: "1" } },
  );
  let text = "";
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.delta?.content;
    if (piece) {
      text += piece;
      await fetch(`${mock}/_mock/step`, { method: "POST" });
    }
  }
  assert.equal(text, "tok0 tok1 tok2 tok3 tok4 ");
});

test("responses API streams", async () => {
  const stream = await client().responses.create({ model: "gpt-4o-mini", input: "hi", stream: true });
  let text = "";
  let completed = null;
  for await (const event of stream) {
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.completed") completed = event.response;
  }
  assert.equal(text, "Hi there");
  assert.equal(completed.status, "completed");
});

test("embeddings", async () => {
  const r = await client().embeddings.create({ model: "text-embedding-3-small", input: "hello" });
  assert.deepEqual(r.data[0].embedding, [0.1, 0.2, 0.3]);
});

test("audio transcription upload is byte for byte", async () => {
  const audio = Buffer.concat([Buffer.from([...Array(256).keys()]), Buffer.from("\r\n--fake\r\n"), Buffer.alloc(5000, 0xff)]);
  const r = await client().audio.transcriptions.create({ model: "whisper-1", file: await toFile(audio, "speech.wav", { type: "audio/wav" }) });
  assert.equal(r.text, "sha256:" + createHash("sha256").update(audio).digest("hex"));
});

test("file content download is binary exact", async () => {
  const response = await client().files.content("file-abc123");
  const bytes = Buffer.from(await response.arrayBuffer());
  const want = Buffer.concat(Array(64).fill(Buffer.from([...Array(256).keys()])));
  assert.ok(bytes.equals(want), `got ${bytes.length} bytes`);
});

test("image generation", async () => {
  const r = await client().images.generate({ model: "gpt-image-1", prompt: "a lighthouse" });
  assert.equal(Buffer.from(r.data[0].b64_json, "base64").toString(), "hello");
});

test("a stream cut mid-way throws instead of ending as if complete", async () => {
  const stream = await client().chat.completions.create({
    model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], stream: true,
    metadata: { gap: "0.01", cut: "2" },
  });
  let text = "";
  await assert.rejects(
    async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    },
    (e) => e instanceof OpenAI.APIError && /broke off/.test(e.message),
  );
  assert.equal(text, "Hello from");
});

test("gateway 401 is an AuthenticationError carrying our message", async () => {
  const c = client({ defaultQuery: { token: env.EXPIRED_TOKEN }, maxRetries: 0 });
  await assert.rejects(c.models.list(), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
    assert.equal(err.status, 401);
    assert.equal(err.code, "token_expired");
    assert.match(err.message, /gateway token expired/);
    return true;
  });
});

test("upstream 429 with retry-after is retried by the SDK", async () => {
  const key = randomUUID();
  const c = client({ maxRetries: 2, defaultHeaders: { "x-mock-attempt-key": key } });
  const r = await c.chat.completions.create({ model: "force-429", messages: [{ role: "user", content: "hi" }] });
  assert.equal(r.choices[0].message.content, "Hello from the mock!");
  const attempts = (await mockRequests()).filter((q) => headerOf(q, "x-mock-attempt-key") === key);
  assert.equal(attempts.length, 2);
});

test("upstream 500 raises the SDK's API error with the upstream's message", async () => {
  await assert.rejects(
    client({ maxRetries: 0 }).chat.completions.create({ model: "force-500", messages: [{ role: "user", content: "x" }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, String(err));
      assert.equal(err.status, 500);
      assert.match(err.message, /The mock upstream failed on purpose\./);
      return true;
    },
  );
});

test("gateway token as apiKey with the upstream key injected", async () => {
  const c = new OpenAI({ baseURL, apiKey: env.KEYED_TOKEN });
  const models = await c.models.list();
  assert.equal(models.data[0].id, "gpt-4o-mini");
  const last = (await mockRequests()).at(-1);
  assert.equal(headerOf(last, "authorization"), `Bearer ${env.UPSTREAM_KEY}`);
  assert.ok(!JSON.stringify(last).includes(env.KEYED_TOKEN));
});

test(".withResponse() sees the upstream's x-request-id", async () => {
  const { data, response } = await client().models.list().withResponse();
  assert.match(response.headers.get("x-request-id"), /^req_mock_/);
  assert.equal(data.data[0].id, "gpt-4o-mini");
});
