// hexq dashboard: refreshes the page's <main> in place, and asks before bulk actions. The pages work without it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var every = parseInt(live.getAttribute("data-refresh-ms"), 10) || 2000;

  function busy() {
    // Never swap the content under a person's hands: a ticked box, a focused field, a selection of text.
    if (live.querySelector("input[type=checkbox]:checked")) { return true; }
    var active = document.activeElement;
    if (active && live.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) { return true; }
    var selection = window.getSelection && window.getSelection();
    return !!(selection && !selection.isCollapsed && live.contains(selection.anchorNode));
  }

  function openDetails() {
    var open = [];
    live.querySelectorAll("details").forEach(function (d, i) { if (d.open) { open.push(i); } });
    return open;
  }

  function refresh() {
    if (document.hidden || busy()) { return schedule(); }
    var open = openDetails();
    fetch(window.location.href, { headers: { "X-Hexq-Fragment": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok || response.status === 503 ? response.text() : null; })
      .then(function (html) {
        if (html !== null && !busy()) {
          live.innerHTML = html;  // server-rendered and escaped there; no script in it runs
          var details = live.querySelectorAll("details");
          open.forEach(function (i) { if (details[i]) { details[i].open = true; } });
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(schedule);
  }

  var timer = null;
  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, every); }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
  schedule();
})();
