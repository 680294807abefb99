// Runs deploy/systemd/roam-resolved.rules against a stand-in for polkit's
// JavaScript API: the rule must grant user roam exactly the four resolve1
// actions the client uses, and nothing to anyone else.
// node deploy/check/polkit_test.js
"use strict";
const fs = require("fs");
const path = require("path");
const assert = require("assert");

const rules = [];
const polkit = {
  Result: { YES: "yes", NO: "no", NOT_HANDLED: null },
  addRule(fn) { rules.push(fn); },
};
const src = fs.readFileSync(path.join(__dirname, "../systemd/roam-resolved.rules"), "utf8");
new Function("polkit", src)(polkit);
assert.strictEqual(rules.length, 1, "expected one polkit.addRule");

const decide = (action, user) => rules[0]({ id: action }, { user }) ?? null;
const granted = [
  "org.freedesktop.resolve1.set-dns-servers",
  "org.freedesktop.resolve1.set-domains",
  "org.freedesktop.resolve1.set-default-route",
  "org.freedesktop.resolve1.revert",
];
let n = 0;
for (const a of granted) {
  assert.strictEqual(decide(a, "roam"), "yes", `${a} for roam`); n++;
  assert.strictEqual(decide(a, "alice"), null, `${a} for alice must not be handled`); n++;
}
for (const a of ["org.freedesktop.resolve1.set-llmnr", "org.freedesktop.systemd1.manage-units",
                 "org.freedesktop.resolve1.set-dns-servers.extra"]) {
  assert.strictEqual(decide(a, "roam"), null, `${a} for roam must not be handled`); n++;
}
console.log(`${n} passed, 0 failed`);
