// Hello: answers over HTTP (API Gateway event) and to direct invocations (plain JSON event).

function nameOf(event) {
  if (event.name !== undefined || !event.requestContext) return event.name;
  // An HTTP request: ?name=… or a JSON body.
  const fromQuery = (event.queryStringParameters || {}).name;
  if (fromQuery !== undefined || !event.body) return fromQuery;
  try {
    const body = event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body;
    return JSON.parse(body).name;
  } catch (_) {
    return undefined;
  }
}

exports.handler = async (event, context) => {
  const name = nameOf(event) || 'world';
  console.log(`greeting ${name}`);
  return {
    message: `Hello, ${name}!`,
    function: context.functionName,
    request_id: context.awsRequestId,
  };
};
