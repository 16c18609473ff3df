// spurious label: keyboard shortcuts and verdict posts for the review and curate pages.
// Plain JavaScript, no dependencies; the server renders every page, this file only sends verdicts.
(function () {
  "use strict";

  var body = document.body;
  var page = body.dataset.page;

  function say(message, bad) {
    var el = document.getElementById("status");
    if (!el) return;
    el.textContent = message;
    el.className = bad ? "bad shown" : "shown";
    window.clearTimeout(say.timer);
    say.timer = window.setTimeout(function () { el.className = ""; }, bad ? 6000 : 1500);
  }

  function post(url, data) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(data)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (json) {
        if (!r.ok) {
          var detail = json && json.detail ? json.detail : r.statusText;
          throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
        }
        return json;
      });
    });
  }

  function go(href) { if (href) window.location.assign(href); }

  function typing(target) {
    if (!target) return false;
    var tag = target.tagName;
    return tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT" || target.isContentEditable;
  }

  function plainKey(e) { return !(e.ctrlKey || e.metaKey || e.altKey); }

  // ---------------------------------------------------------------- review: one component per page
  function setupReview() {
    var note = document.getElementById("note");
    var keys = {};
    document.querySelectorAll(".verdict .verdict-button").forEach(function (b) {
      keys[b.querySelector("kbd").textContent] = b.dataset.verdict;
      b.addEventListener("click", function () { send(b.dataset.verdict); });
    });
    var busy = false;

    function send(verdict) {
      if (busy) return;
      busy = true;
      post(body.dataset.api, { verdict: verdict, note: note ? note.value : null }).then(function (res) {
        say("saved: " + verdict);
        if (res.next) { go(res.next); } else { window.location.reload(); }
      }).catch(function (err) { busy = false; say("not saved: " + err.message, true); });
    }

    document.addEventListener("keydown", function (e) {
      if (!plainKey(e)) return;
      if (typing(e.target)) {
        if (e.key === "Escape") e.target.blur();
        return;
      }
      if (Object.prototype.hasOwnProperty.call(keys, e.key)) { e.preventDefault(); send(keys[e.key]); }
      else if (e.key === "n" || e.key === "ArrowRight") { e.preventDefault(); go(body.dataset.next); }
      else if (e.key === "p" || e.key === "ArrowLeft") { e.preventDefault(); go(body.dataset.prev); }
      else if (e.key === "/" && note) { e.preventDefault(); note.focus(); }
    });
  }

  // ---------------------------------------------------------------- curate: a grid of candidates
  function setupCurate() {
    var cards = Array.prototype.slice.call(document.querySelectorAll("#grid .cand"));
    var keys = {};
    var judged = document.getElementById("judged");
    if (cards.length) {
      cards[0].querySelectorAll(".verdict-button").forEach(function (b) {
        keys[b.querySelector("kbd").textContent] = b.dataset.verdict;
      });
    }
    var current = 0;
    for (var i = 0; i < cards.length; i++) { if (!cards[i].dataset.mine) { current = i; break; } }

    function focusCard(i) {
      if (!cards.length) return;
      current = Math.max(0, Math.min(cards.length - 1, i));
      cards.forEach(function (c, j) { c.classList.toggle("focused", j === current); });
      cards[current].focus({ preventScroll: true });
      cards[current].scrollIntoView({ block: "nearest" });
    }

    function send(card, verdict) {
      post(body.dataset.api, { id: card.dataset.id, verdict: verdict }).then(function (res) {
        var had = card.dataset.mine;
        ["in", "out", "trash"].forEach(function (v) { card.classList.remove("v-" + v); });
        card.classList.add("v-" + verdict);
        card.classList.toggle("accepted", !!res.accepted);
        card.dataset.mine = verdict;
        var counts = card.querySelector(".counts");
        if (counts) {
          counts.textContent = Object.keys(res.counts).map(function (v) { return v + " " + res.counts[v]; }).join(" \u00b7 ");
        }
        if (!had && judged) judged.textContent = String(Number(judged.textContent) + 1);
        var left = cards.filter(function (c) { return !c.dataset.mine; }).length;
        say("saved: " + verdict + (left ? "" : " \u2014 all judged here, n for the next component"));
      }).catch(function (err) { say("not saved: " + err.message, true); });
    }

    cards.forEach(function (card, i) {
      card.addEventListener("click", function (e) {
        var b = e.target.closest(".verdict-button");
        focusCard(i);
        if (b) send(card, b.dataset.verdict);
      });
    });

    document.addEventListener("keydown", function (e) {
      if (!plainKey(e) || typing(e.target)) return;
      if (Object.prototype.hasOwnProperty.call(keys, e.key) && cards.length) {
        e.preventDefault();
        var card = cards[current];
        send(card, keys[e.key]);
        focusCard(current + 1);
      }
      else if (e.key === "j" || e.key === "ArrowRight" || e.key === "ArrowDown") { e.preventDefault(); focusCard(current + 1); }
      else if (e.key === "k" || e.key === "ArrowLeft" || e.key === "ArrowUp") { e.preventDefault(); focusCard(current - 1); }
      else if (e.key === "n") { e.preventDefault(); go(body.dataset.next); }
      else if (e.key === "p") { e.preventDefault(); go(body.dataset.prev); }
    });
    focusCard(current);
  }

  // ---------------------------------------------------------------- overview
  function setupIndex() {
    var button = document.getElementById("sync");
    if (!button) return;
    button.addEventListener("click", function () {
      button.disabled = true;
      post("/api/sync", {}).then(function (res) {
        say("registered " + res.components + " components and " + res.candidates + " candidates");
        window.setTimeout(function () { window.location.reload(); }, 600);
      }).catch(function (err) { button.disabled = false; say("re-scan failed: " + err.message, true); });
    });
  }

  if (page === "review") setupReview();
  else if (page === "curate") setupCurate();
  else if (page === "index") setupIndex();
  body.dataset.ready = "1";  // the shortcuts are live
})();
