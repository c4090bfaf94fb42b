// A worker in Node: fit y = 3x - 1 with a two-parameter model, the gradient computed
// here, Adam's state kept by the service.
//
//   (cd clients/typescript && npm ci && npm run build)
//   node examples/node_worker.mjs            # ADAMHUB_BASE_URL, ADAMHUB_API_KEY
import { Client } from "../clients/typescript/dist/index.js";

const client = new Client({
  baseURL: process.env.ADAMHUB_BASE_URL ?? "http://127.0.0.1:8000",
  apiKey: process.env.ADAMHUB_API_KEY,
  worker: "node-example",
});
const session = await client.createSession({ size: 2, optimizer: { lr: 0.05 }, name: "node-example" });
let [w, b] = [0, 0];
let loss = 0;
for (let step = 0; step < 300; step += 1) {
  let gw = 0, gb = 0;
  loss = 0;
  for (let i = 0; i < 32; i += 1) {
    const x = Math.random() * 2 - 1;
    const error = w * x + b - (3 * x - 1);
    gw += (2 * error * x) / 32;
    gb += (2 * error) / 32;
    loss += (error * error) / 32;
  }
  [w, b] = await session.step([gw, gb], { loss });
}
console.log(`w = ${w.toFixed(3)}, b = ${b.toFixed(3)}, loss = ${loss.toExponential(2)} after ${session.t} steps`);
await session.delete();
