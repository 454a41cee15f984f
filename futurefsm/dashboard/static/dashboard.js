// futurefsm live view: fetch the server-rendered live part of the page twice a second
// and swap it in when it changed. No framework, nothing fetched from elsewhere.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var connection = document.getElementById("connection");
  if (!live) { return; }
  var url = live.getAttribute("data-src");
  var shown = live.innerHTML;
  function tick() {
    fetch(url, { cache: "no-store" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        if (html !== shown) {
          live.innerHTML = html;
          shown = live.innerHTML;
        }
        connection.setAttribute("data-connected", "yes");
        connection.textContent = "";
      })
      .catch(function () {
        connection.setAttribute("data-connected", "no");
        connection.textContent = "disconnected: the client is gone";
      })
      .then(function () { window.setTimeout(tick, 500); });
  }
  window.setTimeout(tick, 500);
})();
