// A tiny browser client: the token lives in memory, the key comes from the build environment.
const apiKey = process.env.WEATHER_API_KEY;
const baseUrl = "https://api.example.com/v1";
let token = null;

export async function login(username, password) {
  const response = await fetch(`${baseUrl}/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!response.ok) throw new Error(`login failed: ${response.status}`);
  ({ token } = await response.json());
  return token;
}

export async function forecast(city) {
  const headers = token ? { Authorization: `Bearer ${token}` } : { "X-Api-Key": apiKey };
  const response = await fetch(`${baseUrl}/forecast?city=${encodeURIComponent(city)}`, { headers });
  return response.json();
}

export function logout() {
  token = null;
  localStorage.removeItem("token");
}

const passwordField = document.querySelector("#password");
passwordField.addEventListener("input", (event) => {
  const password = event.target.value;
  document.querySelector("#strength").textContent = password.length >= 12 ? "ok" : "too short";
});

const options = { key: "theme", secret: false, tokenLimit: 4096, apiKeyHeader: "X-Api-Key" };
console.log(options, apiKey ? "key set" : "no key");
