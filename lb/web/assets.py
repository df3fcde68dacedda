"""The console's stylesheet and its one script, served by the console itself (/static/): no
external assets, and a Content-Security-Policy that allows nothing else."""

CSS = """
:root{--fg:#1d232a;--mute:#5b6470;--line:#d5dae0;--bg:#f5f7f9;--nav:#22303c;--acc:#0b63b6;--ok:#17803d;
--bad:#b3261e;--warn:#9a5b00}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
header{background:var(--nav);color:#fff;padding:.5em 1em;display:flex;flex-wrap:wrap;align-items:center;gap:.4em 1em}
header .brand{font-weight:600;margin-right:.5em}
header nav{display:flex;flex-wrap:wrap;gap:.2em .9em;flex:1}
header a{color:#dce6f0;text-decoration:none;padding:.2em 0;border-bottom:2px solid transparent}
header a.on{color:#fff;border-color:#8cc4ff}
header form{margin:0}
main{padding:1em;max-width:1200px;margin:0 auto}
h1{font-size:1.35em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.2em 0 .4em}h3{font-size:1em;margin:1em 0 .3em}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.8em 1em;margin:0 0 1em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid var(--line);padding:.35em .6em;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#eef1f4;font-weight:600;font-size:.9em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:12em}
.up{color:var(--ok);font-weight:600}.down,.err{color:var(--bad);font-weight:600}.note{color:var(--mute)}
.override{color:var(--warn);font-weight:600}.inactive{color:var(--mute)}
.flash{border-left:4px solid var(--ok);background:#fff;padding:.6em 1em;margin:0 0 1em}
.flash.bad{border-color:var(--bad)}.flash.warn{border-color:var(--warn)}
.flash ul{margin:.3em 0 0;padding-left:1.2em}
button,.button{font:inherit;border:1px solid #9aa7b4;background:#fff;border-radius:4px;padding:.25em .8em;
color:var(--fg);cursor:pointer;text-decoration:none;display:inline-block}
button.primary,.button.primary{background:var(--acc);border-color:var(--acc);color:#fff}
button.danger{color:var(--bad);border-color:var(--bad)}
button:disabled{opacity:.45;cursor:default}
td form,.inline{display:inline;margin:0}
.bar{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:center;margin:0 0 .8em}
form.edit .row{display:grid;grid-template-columns:15em 1fr;gap:.3em 1em;align-items:start;padding:.35em 0;
border-bottom:1px solid #eef0f2}
form.edit label{font-weight:500;padding-top:.25em}
form.edit input[type=text],form.edit input[type=password],form.edit select,form.edit textarea{font:inherit;width:100%;
max-width:34em;padding:.3em .45em;border:1px solid #aab4be;border-radius:4px;background:#fff}
form.edit textarea{min-height:4.5em;font-family:ui-monospace,monospace}
form.edit .row.bad input,form.edit .row.bad select,form.edit .row.bad textarea{border-color:var(--bad);
background:#fff6f5}
.fielderr{color:var(--bad);font-size:.92em;margin-top:.2em}
.help{color:var(--mute);font-size:.88em}
.actions{margin-top:1em;display:flex;gap:.6em;flex-wrap:wrap}
pre.config{background:#fff;border:1px solid var(--line);padding:.8em;overflow:auto;font-size:.9em}
.kv th{width:15em}
.pill{display:inline-block;padding:0 .5em;border-radius:1em;font-size:.85em;border:1px solid currentColor}
@media (max-width:700px){
 body{font-size:14px}main{padding:.6em}
 form.edit .row{grid-template-columns:1fr}
 form.edit label{padding-top:0}
 th,td{padding:.3em .4em}
 .hide-narrow{display:none}
}
"""

# The live table: every N seconds (the select; 10 s by default, as Piranha's) or on "Update now",
# fetch /status?part=live (the same HTML the page was built with) and swap it in.
JS = """
(function(){
  var live=document.getElementById('live'); if(!live) return;
  var sel=document.getElementById('every'), btn=document.getElementById('now'), when=document.getElementById('when');
  var timer=null;
  function update(){
    fetch('/status?part=live',{credentials:'same-origin',headers:{'Accept':'text/html'}})
      .then(function(r){ if(r.status==401||r.redirected){ location.href='/login'; return null; } return r.text(); })
      .then(function(t){ if(t!==null){ live.innerHTML=t; if(when) when.textContent=new Date().toLocaleTimeString(); }})
      .catch(function(){ if(when) when.textContent='update failed'; });
  }
  function arm(){
    if(timer) clearInterval(timer);
    var s=parseInt(sel.value,10); if(s>0) timer=setInterval(update,s*1000);
  }
  if(sel){ sel.addEventListener('change',function(){ arm(); history.replaceState(null,'','/status?refresh='+sel.value); }); arm(); }
  if(btn){ btn.addEventListener('click',function(e){ e.preventDefault(); update(); }); }
  var noscript=document.getElementById('refresh-form'); if(noscript) noscript.removeAttribute('hidden');
})();
"""
