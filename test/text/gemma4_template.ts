// A chat template in Gemma 4's format for tests, written for them with the Jinja features Google's template uses
// (macros with keyword arguments, namespaces, dictsort, type tests, tool results read from the calling message's
// `tool_responses`); it is not Google's text, and it declares tools by name and description only.
export const GEMMA4_TEST_TEMPLATE = `
{%- macro value(v, quote_keys=True) -%}
  {%- if v is string -%}<|"|>{{ v }}<|"|>
  {%- elif v is boolean -%}{{ 'true' if v else 'false' }}
  {%- elif v is mapping -%}
    {%- set ns = namespace(sep='') -%}{
    {%- for k, x in v | dictsort -%}{{ ns.sep }}{{ ('<|"|>' + k + '<|"|>') if quote_keys else k }}:{{ value(x, quote_keys=quote_keys) }}{%- set ns.sep = ',' -%}{%- endfor -%}}
  {%- elif v is sequence -%}[{%- for x in v -%}{{ value(x, quote_keys=quote_keys) }}{{ ',' if not loop.last }}{%- endfor -%}]
  {%- else -%}{{ v }}
  {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last=None) -%}
{%- set rest = messages -%}
{{- bos_token -}}
{%- if enable_thinking or tools or messages[0]['role'] in ['system', 'developer'] -%}
  {{- '<|turn>system\\n' -}}
  {%- if enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}
  {%- if messages[0]['role'] in ['system', 'developer'] -%}{{- messages[0]['content'] | trim -}}{%- set rest = messages[1:] -%}{%- endif -%}
  {%- for tool in tools or [] -%}
    {{- '<|tool>declaration:' + tool['function']['name'] + value({'description': tool['function']['description'] | default('')}) + '<tool|>' -}}
  {%- endfor -%}
  {{- '<turn|>\\n' -}}
{%- endif -%}
{%- for m in rest -%}
  {%- set ns.last = None -%}
  {{- '<|turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' -}}
  {%- for call in m['tool_calls'] or [] -%}
    {{- '<|tool_call>call:' + call['function']['name'] + value(call['function']['arguments'], quote_keys=False) + '<tool_call|>' -}}
    {%- set ns.last = 'call' -%}
  {%- endfor -%}
  {%- for r in m['tool_responses'] or [] -%}
    {%- if r['response'] is mapping -%}
      {{- '<|tool_response>response:' + r['name'] + value(r['response'], quote_keys=False) + '<tool_response|>' -}}
    {%- else -%}
      {{- '<|tool_response>response:' + r['name'] + '{value:' + value(r['response'], quote_keys=False) + '}<tool_response|>' -}}
    {%- endif -%}
    {%- set ns.last = 'response' -%}
  {%- endfor -%}
  {%- if m['content'] is string -%}{{- m['content'] | trim -}}{%- endif -%}
  {%- if not (m['tool_responses'] and not m['content']) -%}{{- '<turn|>\\n' -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {%- if ns.last != 'response' -%}{{- '<|turn>model\\n' -}}{%- endif -%}
  {%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}
{%- endif -%}
`;
