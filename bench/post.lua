-- wrk script: POST one realistic (~1 KB) chat completion request, non-streaming.
-- The same body goes to the node and, for the reference figures, straight to the
-- benchmark upstream (which ignores the model name).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly and precisely. If you do not know the answer, say so; never invent facts, names, numbers or references. Prefer plain language, short sentences and concrete examples over abstractions."},{"role":"user","content":"What is the capital of France? Please also tell me, in one or two sentences, since when it has been the capital, and name one famous landmark there that a first-time visitor should not miss, with a short reason why it is worth the time."},{"role":"assistant","content":"Paris is the capital of France."},{"role":"user","content":"Thanks. And how long does it take to get there by train from London, roughly, and which station does the train arrive at?"}],"temperature":0.2,"max_tokens":256,"top_p":1,"user":"bench-user-0001","metadata":{"purpose":"benchmark"}}]]
